"""Measure explanations and masking on a labeled CSV with a bundle (README "Explain").

    python -m marketpulse.tools.trust_eval --bundle B --texts ../shared/data/twitter_financial_news/valid.csv \
        --label-names bearish,bullish,neutral [--explain-rows 400]

Prints, for the bundle's CPU graph:
- the faithfulness gap: deleting each text's 3 top-weighted words against 3 random words
  (marketpulse.inference.explain.faithfulness), on the first --explain-rows texts;
- macro-F1 on every row with the texts as written and with `privacy.mask` applied, and
  how many texts masking changed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import duckdb


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bundle", required=True, type=click.Path(file_okay=False))
@click.option("--texts", required=True, type=click.Path(dir_okay=False), help="CSV: text,label.")
@click.option("--label-names", help="Names of integer labels 0,1,2...")
@click.option("--explain-rows", default=400, show_default=True, type=int)
@click.option("--k", default=3, show_default=True, type=int)
def main(bundle, texts, label_names, explain_rows, k):
    """Faithfulness gap of explanations and macro-F1 with and without masking."""
    from marketpulse import privacy
    from marketpulse.inference.explain import explain, faithfulness
    from marketpulse.inference.predictor import Predictor
    from marketpulse.metrics import classification_metrics

    rows = duckdb.sql(f"SELECT text, label FROM read_csv('{Path(texts)}')").fetchall()
    names = label_names.split(",") if label_names else None
    text = [r[0] for r in rows]
    truth = [names[int(r[1])] if names else str(r[1]) for r in rows]
    predictor = Predictor(Path(bundle), device="cpu")
    out = {"bundle": bundle, "variant": predictor.variant, "rows": len(rows)}

    t0 = time.perf_counter()
    explanations = explain(predictor, text[:explain_rows])
    f = faithfulness(predictor, explanations, k=k)
    out["faithfulness"] = {**f.__dict__, "seconds": round(time.perf_counter() - t0, 1)}
    click.echo(f"explain: {f.summary()}", err=True)

    t0 = time.perf_counter()
    masked = [privacy.mask(t) for t in text]
    mask_s = time.perf_counter() - t0
    f1 = {}
    for name, batch in (("as_written", text), ("masked", masked)):
        predicted = predictor.predict(batch)
        f1[name] = classification_metrics(truth, predicted, predictor.labels)["macro_f1"]
    out["masking"] = {
        "texts_changed": sum(a != b for a, b in zip(text, masked, strict=True)),
        "macro_f1": f1,
        "change_points": round(100 * (f1["masked"] - f1["as_written"]), 3),
        "mask_seconds": round(mask_s, 1),
    }
    click.echo(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
