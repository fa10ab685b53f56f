"""The runtime's commands: `score` (classify a DuckDB table, resumable, local or on Ray)
and `explain` (which words decided each label), with explain's terminal highlighting.

The runtime (onnxruntime) loads inside each command, never at import."""

from __future__ import annotations

import sys

import click

from marketpulse import variants as registry
from marketpulse.sql import DEFAULT_STORAGE_VERSION


@click.command()
@click.option("--db", required=True, type=click.Path(dir_okay=False), help="Source DuckDB file.")
@click.option("--table", required=True, help="Table (or view) holding the texts.")
@click.option("--id-col", required=True, help="Unique, non-NULL key column.")
@click.option("--text-col", required=True, help="VARCHAR column to classify.")
@click.option("--bundle", required=True, type=click.Path(file_okay=False), help="Bundle dir.")
@click.option(
    "--results-db", type=click.Path(dir_okay=False), help="Write results here [default: --db]."
)
@click.option("--results-table", default="scores", show_default=True)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    envvar="MARKETPULSE_DEVICE",
    help="cpu runs --variant auto's pick, cuda runs fp16; auto takes CUDA when it works.",
)
@click.option(
    "--variant",
    type=click.Choice(registry.CHOICES),
    default=registry.AUTO,
    show_default=True,
    help="The graph to run. auto: on CPU the fastest graph that passed export's gate, "
    "timed once per model and machine (cached in --cache-dir), and fp32 instead if that "
    "graph disagrees with fp32 on more than 1% of --auto-check-rows of the rows to score; "
    "on CUDA fp16.",
)
@click.option(
    "--auto-check-rows",
    type=click.IntRange(min=0),
    default=512,
    show_default=True,
    help="Rows to score (a hash sample) that --variant auto scores with its quantized pick "
    "and with fp32 before the run; 0: off (export's gate alone decides).",
)
@click.option(
    "--rescore-margin",
    type=click.FloatRange(0, 1, max_open=True),
    help="int8 rows whose top two probabilities are closer than this are rescored by fp32; "
    "0: int8 alone [default: the bundle's, from export].",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    envvar="MARKETPULSE_CACHE",
    help="Where --variant auto keeps its timings [default: ~/.cache/marketpulse].",
)
@click.option(
    "--canary-rows",
    type=click.IntRange(min=0),
    default=256,
    show_default=True,
    help="Scored rows sampled and rescored by the fp32 graph to measure how often the "
    "graph that ran disagrees with it (runs.canary_disagree_share); 0: off.",
)
@click.option("--limit", type=click.IntRange(min=0), help="Score at most N pending rows.")
@click.option(
    "--where",
    help="Filter on the table's own columns, e.g. \"lang = 'en' AND posted_at >= DATE "
    "'2024-01-01'\". Comparisons, AND/OR/NOT, IN, BETWEEN, LIKE, IS NULL, casts and simple "
    "functions only; no subqueries or other tables; values are sent as parameters.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    envvar="MARKETPULSE_THREADS",
    help="CPU batches run at once, one core each [default: all cores].",
)
@click.option(
    "--batch-tokens",
    type=click.IntRange(min=64),
    help="Padded tokens per inference batch [default: 1024 on CPU (512 with AMX), 32768 on CUDA].",
)
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=1),
    default=4096,
    show_default=True,
    help="Rows per committed chunk (and per length-sorting window).",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    envvar="MARKETPULSE_ENGINE",
    help="local: this process. ray: a Ray Data actor pool (pip install 'marketpulse[ray]').",
)
@click.option(
    "--ray-address",
    envvar="MARKETPULSE_RAY_ADDRESS",
    help="Ray cluster to join: auto (run on a node after `ray start`) or HEAD_IP:6379 "
    "[default: start a local one].",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Ray scorer actors [default: one per GPU, or one per CPU but one].",
)
@click.option(
    "--gpus-per-worker",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="GPUs per Ray actor; above 0 the actors run the fp16 graph on CUDA.",
)
@click.option(
    "--stage-dir",
    type=click.Path(file_okay=False),
    help="Where --engine ray stages pending rows as Parquet; on a multi-node cluster a path "
    "every node can read [default: system temp dir].",
)
@click.option(
    "--ray-timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds --engine ray may go without a scored batch coming back (start-up "
    "included) before the run fails [default: 600].",
)
@click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0),
    default=3600,
    show_default=True,
    envvar="MARKETPULSE_LOCK_TIMEOUT",
    help="Seconds a commit waits for readers holding the database file before the run fails.",
)
@click.option(
    "--commit-seconds",
    type=click.FloatRange(min=0),
    default=5,
    show_default=True,
    help="Commit scored chunks at most this often; readers wait at most one commit.",
)
@click.option(
    "--storage-version",
    default=DEFAULT_STORAGE_VERSION,
    show_default=True,
    envvar="MARKETPULSE_STORAGE_VERSION",
    help="DuckDB storage format of a --results-db this run creates (an existing file keeps "
    "its own); the default opens in DuckDB 1.x clients. 'latest' for DuckDB's newest.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON on stdout.")
def score(
    db,
    table,
    id_col,
    text_col,
    bundle,
    results_db,
    results_table,
    device,
    variant,
    cache_dir,
    canary_rows,
    auto_check_rows,
    rescore_margin,
    limit,
    where,
    threads,
    batch_tokens,
    chunk_rows,
    engine,
    ray_address,
    workers,
    gpus_per_worker,
    stage_dir,
    ray_timeout,
    lock_timeout,
    commit_seconds,
    storage_version,
    as_json,
):
    """Classify every not-yet-scored row of a DuckDB table; resumable.

    Example: marketpulse score --db news.duckdb --table news --id-col id --text-col text --bundle bundle/
    """
    import json
    from pathlib import Path

    from marketpulse.runtime import ScoreConfig
    from marketpulse.runtime import score as run_score
    from marketpulse.runtime.runs import Interrupted

    ray_flags = (ray_address, workers, gpus_per_worker, stage_dir, ray_timeout)
    if engine == "local" and any(ray_flags):
        raise click.UsageError(
            "--ray-address, --workers, --gpus-per-worker, --stage-dir and --ray-timeout "
            "need --engine ray"
        )
    if engine == "ray":
        from functools import partial

        from marketpulse.runtime.ray_engine import score_with_ray

        run_score = partial(
            score_with_ray,
            ray_address=ray_address,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            stage_dir=Path(stage_dir) if stage_dir else None,
            **({"timeout_s": ray_timeout} if ray_timeout else {}),
        )
    cfg = ScoreConfig(
        db=Path(db),
        table=table,
        id_col=id_col,
        text_col=text_col,
        bundle=Path(bundle),
        results_db=Path(results_db) if results_db else None,
        results_table=results_table,
        device=device,
        variant=variant,
        cache_dir=Path(cache_dir) if cache_dir else None,
        canary_rows=canary_rows,
        auto_check_rows=auto_check_rows,
        rescore_margin=rescore_margin,
        limit=limit,
        where=where,
        threads=threads,
        batch_tokens=batch_tokens,
        chunk_rows=chunk_rows,
        lock_timeout=lock_timeout,
        commit_seconds=commit_seconds,
        storage_version=storage_version,
    )
    try:
        stats = run_score(cfg)
    except Interrupted as exc:  # SIGTERM / SIGINT: the chunk in hand was committed
        if exc.stats is not None:
            click.echo(exc.stats.summary(), err=True)
        click.echo(f"stopped by {exc}; rerun the same command to score the rest", err=True)
        sys.exit(exc.exit_code)
    click.echo(stats.summary(), err=as_json)
    if as_json:
        click.echo(json.dumps(stats.to_dict(), indent=2))


@click.command()
@click.option("--bundle", required=True, type=click.Path(file_okay=False), help="Bundle dir.")
@click.option("--text", "texts", multiple=True, help="A text to explain (repeatable).")
@click.option("--db", type=click.Path(dir_okay=False), help="DuckDB file holding the texts.")
@click.option("--table", help="Table (or view) holding the texts.")
@click.option("--id-col", help="Unique key column.")
@click.option("--text-col", help="VARCHAR column to explain.")
@click.option("--where", help="Filter on the table's own columns, as for score.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--top", default=5, show_default=True, type=click.IntRange(min=1), help="Words listed."
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True
)
@click.option(
    "--variant",
    type=click.Choice(registry.NAMES),
    help="Graph to explain with [default: per row, the graph that scored it (runs.variant), "
    "else the CPU preference].",
)
@click.option(
    "--results-db",
    type=click.Path(dir_okay=False),
    help="File score wrote the rows' scores to [default: --db].",
)
@click.option(
    "--results-table",
    default="scores",
    show_default=True,
    help="Scores table that says which graph scored each row.",
)
def explain(
    bundle,
    texts,
    db,
    table,
    id_col,
    text_col,
    where,
    limit,
    top,
    device,
    variant,
    results_db,
    results_table,
):
    """Show which words decided each label (leave-one-word-out on the ONNX graph).

    Example: marketpulse explain --bundle bundle/ --text "Apple beats estimates, shares jump"
    """
    from pathlib import Path

    table_flags = (db, table, id_col, text_col)
    if texts and any(table_flags):
        raise click.UsageError("pass --text, or --db --table --id-col --text-col, not both")
    if not texts and not all(table_flags):
        raise click.UsageError("pass --text, or all of --db --table --id-col --text-col")
    if texts and (where or results_db):
        raise click.UsageError("--where and --results-db need --db --table --id-col --text-col")

    def show(row_id, e, words):
        label = f"{row_id}: " if row_id is not None else ""
        click.echo(f"{label}{e.label} ({e.probability:.2f})  {_highlight(e, words)}")
        best = sorted(zip(words, e.words, strict=True), key=lambda p: -p[1].weight)[:top]
        click.echo("    top words: " + ", ".join(f"{_clip(w)} {x.weight:+.3f}" for w, x in best))

    if texts:
        from marketpulse.inference.explain import explain as explain_texts
        from marketpulse.inference.predictor import Predictor
        from marketpulse.runtime.explanations import masked_words
        from marketpulse.text import is_blank

        for text in texts:
            if is_blank(text):
                click.echo(f"{text!r}: blank text, skipped (nothing to label)", err=True)
        texts = [t for t in texts if not is_blank(t)]
        if not texts:
            return
        predictor = Predictor(Path(bundle), variant=variant, device=device)
        for e in explain_texts(predictor, texts):
            show(None, e, masked_words(e))
        return
    from marketpulse.runtime.explanations import ExplainConfig, explain_table

    cfg = ExplainConfig(
        db=Path(db),
        table=table,
        id_col=id_col,
        text_col=text_col,
        bundle=Path(bundle),
        where=where,
        limit=limit,
        device=device,
        variant=variant,
        results_db=Path(results_db) if results_db else None,
        results_table=results_table,
    )
    stats = explain_table(cfg, on_row=show)
    click.echo(stats.summary(results_db or db), err=True)


def _clip(word: str, width: int = 40) -> str:
    """A word as explain prints it: at most `width` characters (a 20,000-character run
    without spaces, or a CJK paragraph, is one word)."""
    return word if len(word) <= width else word[: width - 1] + "\u2026"


def _highlight(e, words: list[str]) -> str:
    """The weighed words: green supports the label, red argues against; bold = strong.

    Words past those the model reads (or past explain's word cap) weigh nothing and are
    counted, not printed: a 100 KB post would otherwise fill the terminal."""
    scale = max((abs(w.weight) for w in e.words), default=0.0) or 1.0
    out = []
    shown = max(e.occluded, 1)
    for word, w in zip(words[:shown], e.words[:shown], strict=True):
        strength = abs(w.weight) / scale
        word = _clip(word)
        if strength < 0.2:
            out.append(word)
        else:
            color = "green" if w.weight > 0 else "red"
            out.append(click.style(word, fg=color, bold=strength >= 0.6))
    if len(words) > shown:
        out.append(click.style(f"... (+{len(words) - shown} words not weighed)", dim=True))
    return " ".join(out)
