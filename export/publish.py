"""Check a staged bundle against PyTorch and, when it passes, move it into place.

The gate, on the test split (or the built-in sentences) and on the check texts:
- fp32 parity: max |logit_onnx - logit_torch| <= parity_tolerance on both, always fatal
  (a wrong export is never "an acceptable drop").
- every other variant that can run here, on the test split: top-1 agreement with PyTorch
  >= min_agreement and macro-F1 no more than max_f1_drop below PyTorch's; a miss
  rejects the export unless allow_accuracy_drop.
- the same variants on the check texts: top-1 agreement with PyTorch >= min_agreement.
  A miss does not reject the export: the variant is published marked `passed: false`,
  so the runtime does not pick it on its own, and the other graphs stay usable. A
  test-split miss published with allow_accuracy_drop is marked the same way.
- a variant made for CUDA (fp16) is gated only where the CUDA provider exists; without
  it the check is recorded as skipped, with its agreement on the CPU provider beside it.

`checks.gate.variants` is the verdict the runtime reads: for every graph,
{"passed", "test_agreement", "check_agreement", "check_rows"} (null where not measured).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from marketpulse import drift
from marketpulse import variants as registry
from marketpulse.bundle import DRIFT_REFERENCE, Bundle, load_bundle, write_manifest
from marketpulse.errors import MarketpulseError
from marketpulse.export.checks import CheckSample, CheckTexts
from marketpulse.export.log import log
from marketpulse.export.summary import describe_agreement
from marketpulse.staging import replace_dir


def on_cpu(variant: str) -> str:
    """The check's name for a CUDA variant run on the CPU provider (no CUDA here)."""
    return f"{variant} on CPU"


def check_and_publish(
    cfg,
    checkpoint: Path,
    texts: CheckTexts,
    sample: CheckSample | None,
    staging: Path,
    out: Path,
    manifest: dict,
) -> Bundle:
    """Run every check on the staged bundle; publish it at `out` or raise saying why not."""
    from marketpulse.export.checks import TorchReference, run_all
    from marketpulse.inference.batching import TextEncoder, softmax

    manifest = dict(manifest, valid=False, invalid_reason="export checks have not run yet")
    write_manifest(staging, manifest)
    staged = load_bundle(staging, allow_invalid=True)

    labels = staged.labels
    predictors, on_cpu_errors = _predictors(staged)
    sample_texts = sample.texts if sample is not None else []
    extra = f" and {len(sample_texts)} check texts from {sample.source}" if sample else ""
    log(f"checking {', '.join(predictors)} against PyTorch on {texts.source}{extra}")
    # One pass over both sets: same batches for every graph, and PyTorch loads once.
    onnx_logits, torch_logits = run_all(
        predictors, TorchReference(checkpoint), texts.texts + sample_texts
    )
    staged_ids = TextEncoder(staged.tokenizer_path, staged.max_length).encode(texts.texts).ids
    del predictors  # release the sessions before the files move
    alone = _rescore(staged, onnx_logits)
    checks = _measure(staged, texts, sample, onnx_logits, torch_logits, on_cpu_errors)
    _record_rescoring(checks, alone, torch_logits, len(texts.texts))

    failures = _parity_failures(cfg, checks)
    drops = _test_split_drops(cfg, checks)
    marked = _check_text_failures(cfg, checks)
    checks["gate"] = {
        "min_agreement": cfg.min_agreement,
        "max_f1_drop": cfg.max_f1_drop,
        "allow_accuracy_drop": cfg.allow_accuracy_drop,
        "accuracy_drops": [m for messages in drops.values() for m in messages],
        "check_failures": list(marked.values()),
        "variants": _verdicts(cfg, checks, drops, marked),
    }
    if failures:
        raise MarketpulseError(
            f"export rejected, {out} left unchanged: {'; '.join(failures)}; the ONNX export "
            "is wrong: re-export with --optimization none, and report it if that fails too"
        )
    if drops and not cfg.allow_accuracy_drop:
        raise MarketpulseError(
            f"export rejected, {out} left unchanged: {'; '.join(checks['gate']['accuracy_drops'])}"
            f"; {_rejection_fix(drops, manifest.get('calibration_rows'))}"
        )
    for variant, messages in drops.items():
        log(
            f"{'; '.join(messages)}: published (--allow-accuracy-drop) but marked failed; "
            f"it will not be chosen automatically (score with --variant {variant} to use it)"
        )
    for message in marked.values():
        log(message)
    manifest.update(checks=checks, valid=True)
    manifest[DRIFT_REFERENCE] = drift.reference(
        softmax(onnx_logits[registry.REFERENCE][: len(texts.texts)]),
        staged_ids,
        staged.tokenizer_path,
        labels,
        f"{texts.source}, {registry.REFERENCE} graph",
    )
    manifest.pop("invalid_reason")
    write_manifest(staging, manifest)
    replace_dir(staging, out)
    bundle = load_bundle(out)
    log(f"wrote bundle {out} (model version {bundle.version})")
    return bundle


def _rescore(staged: Bundle, onnx_logits: dict[str, np.ndarray]) -> dict[str, tuple]:
    """Gate each graph as the runtime runs it: a graph with a rescore margin gets the fp32
    graph's logits on its hesitant rows (in place). Returns, per such graph, its own
    logits and the rescored mask, for `_record_rescoring`."""
    from marketpulse.inference.predictor import rescored_logits

    alone = {}
    for name in list(onnx_logits):
        margin = staged.rescore_margin(name)
        if margin and name != registry.REFERENCE:
            own = onnx_logits[name]
            onnx_logits[name], mask = rescored_logits(own, onnx_logits[registry.REFERENCE], margin)
            alone[name] = (own, mask, margin)
    return alone


def _record_rescoring(checks: dict, alone: dict, torch_logits: np.ndarray, split: int) -> None:
    """Beside each rescored graph's results: the margin, the share of rows rescored, and
    what the graph alone agreed on (its gate figures are with the rescoring)."""
    sets = [(checks["variants"], slice(None, split))]
    if checks["check_texts"] is not None:
        sets.append((checks["check_texts"]["variants"], slice(split, None)))
    for name, (own, mask, margin) in alone.items():
        for results, rows in sets:
            if name not in results or not len(mask[rows]):
                continue
            agreed = own[rows].argmax(axis=1) == torch_logits[rows].argmax(axis=1)
            results[name]["rescore_margin"] = margin
            results[name]["rescored_share"] = float(mask[rows].mean())
            results[name]["agreement_without_rescoring"] = float(agreed.mean())


def _predictors(staged: Bundle) -> tuple[dict, dict[str, str]]:
    """A session per variant on its provider; a CUDA variant without CUDA runs on the CPU."""
    from marketpulse.inference.predictor import Predictor, cuda_provider_available

    cuda = cuda_provider_available()
    devices = {v: registry.check_device(v) for v in staged.variants}
    predictors = {
        v: Predictor(staged, variant=v, device=device, rescore_margin=0)  # each graph alone
        for v, device in devices.items()
        if device != "cuda" or cuda
    }
    on_cpu_errors: dict[str, str] = {}
    for v in staged.variants:
        if v in predictors:
            continue
        # Not the provider a CUDA graph is made for, but the CPU runs the same graph and
        # shows the conversion kept the model's decisions; recorded, not gated.
        try:
            predictors[on_cpu(v)] = Predictor(staged, variant=v, device="cpu", rescore_margin=0)
        except MarketpulseError as exc:
            on_cpu_errors[v] = str(exc)
    return predictors, on_cpu_errors


def _measure(
    staged: Bundle,
    texts: CheckTexts,
    sample: CheckSample | None,
    onnx_logits: dict[str, np.ndarray],
    torch_logits: np.ndarray,
    on_cpu_errors: dict[str, str],
) -> dict[str, Any]:
    """`checks` without the gate: per-variant results on the test split (rows before
    `split`) and on the check texts (rows after it), and where each set came from."""
    from marketpulse.metrics import classification_metrics

    labels, split = staged.labels, len(texts.texts)
    checks: dict[str, Any] = {"texts": texts.source}
    checks["variants"] = _results(
        staged.variants,
        {name: logits[:split] for name, logits in onnx_logits.items()},
        torch_logits[:split],
        labels,
        texts.labels,
        on_cpu_errors,
    )
    if texts.labels is not None:
        predicted = [labels[i] for i in torch_logits[:split].argmax(axis=1)]
        scores = classification_metrics(texts.labels, predicted, labels)
        checks["pytorch"] = {"rows": len(predicted), "macro_f1": scores["macro_f1"]}
    checks["check_texts"] = None
    if sample is not None:
        on_sample = _results(
            staged.variants,
            {name: logits[split:] for name, logits in onnx_logits.items()},
            torch_logits[split:],
            labels,
            None,
            on_cpu_errors,
        )
        checks["check_texts"] = {**sample.provenance(), "variants": on_sample}
    return checks


def _results(
    variants: list[str],
    onnx_logits: dict[str, np.ndarray],
    torch_logits: np.ndarray,
    labels: list[str],
    truth: list[str] | None,
    on_cpu_errors: dict[str, str],
) -> dict[str, dict]:
    """`compare` per variant on one set of texts; skipped ones say why."""
    from marketpulse.export.checks import compare

    results = {}
    for variant in variants:
        if variant in onnx_logits:
            results[variant] = compare(onnx_logits[variant], torch_logits, labels, truth)
            continue
        result: dict[str, Any] = {"skipped": "no CUDA provider"}
        if on_cpu(variant) in onnx_logits:
            result["cpu_provider"] = compare(
                onnx_logits[on_cpu(variant)], torch_logits, labels, truth
            )
        elif variant in on_cpu_errors:
            result["cpu_provider"] = {"error": on_cpu_errors[variant]}
        results[variant] = result
    return results


def _parity_failures(cfg, checks: dict) -> list[str]:
    """fp32 against PyTorch on the test split and on the check texts."""
    sets = [("", checks["variants"])]
    if checks["check_texts"] is not None:
        sets.append((" on the check texts", checks["check_texts"]["variants"]))
    failures = []
    for where, results in sets:
        result = results[registry.REFERENCE]
        result["parity_tolerance"] = cfg.parity_tolerance
        if result["max_abs_logit_diff"] > cfg.parity_tolerance:
            failures.append(
                f"fp32 logits differ from PyTorch by {result['max_abs_logit_diff']:.2e}{where} "
                f"(> {cfg.parity_tolerance:.0e})"
            )
    return failures


def _gated(results: dict) -> dict[str, dict]:
    """The non-reference variants that ran on their own provider."""
    return {v: r for v, r in results.items() if v != registry.REFERENCE and "agreement" in r}


def _rejection_fix(drops: dict, calibration_rows: int | None) -> str:
    """What to do about a rejection: more calibration texts first when int8 calibrated
    on too few to trust its scales, else publish it marked failed or loosen the gate."""
    from marketpulse.export.outliers import MIN_CALIBRATION_ROWS

    fix = "pass --allow-accuracy-drop to publish it marked failed, or loosen "
    fix += "--min-agreement / --max-f1-drop"
    if "int8" in drops:
        fix += ", or raise --rescore-margin (more of int8's hesitant rows rescored by fp32)"
    if "int8" in drops and calibration_rows is not None and calibration_rows < MIN_CALIBRATION_ROWS:
        return (
            f"int8 calibrated its scales on only {calibration_rows} text(s): pass "
            f"--check-input/--check-table with at least {2 * MIN_CALIBRATION_ROWS} usable texts "
            f"(half of them calibrate) and export again; else {fix}"
        )
    return fix


def _test_split_drops(cfg, checks: dict) -> dict[str, list[str]]:
    """Per variant, why it misses the gate on the test split (recording its F1 drop)."""
    drops: dict[str, list[str]] = {}
    for variant, result in _gated(checks["variants"]).items():
        if result["agreement"] < cfg.min_agreement:
            drops.setdefault(variant, []).append(
                f"{variant} agrees with PyTorch on {describe_agreement(result)} "
                f"(< {cfg.min_agreement:.2%})"
            )
        if "macro_f1" in result:
            result["f1_drop"] = checks["pytorch"]["macro_f1"] - result["macro_f1"]
            if result["f1_drop"] > cfg.max_f1_drop:
                drops.setdefault(variant, []).append(
                    f"{variant} macro-F1 is {result['f1_drop']:.4f} below PyTorch's "
                    f"(> {cfg.max_f1_drop})"
                )
    return drops


def _check_text_failures(cfg, checks: dict) -> dict[str, str]:
    """Per variant that misses the gate on the check texts, the line saying so."""
    if checks["check_texts"] is None:
        return {}
    return {
        variant: (
            f"{variant} FAILED the gate: it agrees with PyTorch on "
            f"{describe_agreement(result, 'check texts')} (< {cfg.min_agreement:.2%}); it is kept in "
            f"the bundle but will not be chosen automatically (score with --variant {variant} "
            "to use it anyway)"
        )
        for variant, result in _gated(checks["check_texts"]["variants"]).items()
        if result["agreement"] < cfg.min_agreement
    }


def _verdicts(cfg, checks: dict, drops: dict, marked: dict) -> dict[str, dict]:
    """The runtime's contract: whether each graph may be chosen, and the figures behind it.

    fp32 passes by parity (a parity failure never publishes); a variant not gated here
    (no CUDA provider) passes with null figures, as its check could not run. A drop
    published with allow_accuracy_drop is not a pass: the graph is there to be asked for.
    """
    on_sample = (checks["check_texts"] or {}).get("variants", {})
    verdicts = {}
    for variant, result in checks["variants"].items():
        sampled = on_sample.get(variant, {})
        verdicts[variant] = {
            "passed": variant == registry.REFERENCE or not (variant in drops or variant in marked),
            "test_agreement": result.get("agreement"),
            "check_agreement": sampled.get("agreement"),
            "check_rows": sampled.get("rows"),
        }
    return verdicts
