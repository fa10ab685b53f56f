"""Readable summaries of a bundle manifest (for `export` and `inspect`; no heavy imports)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from marketpulse import variants as registry


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 2**20:.1f} MiB" if path.is_file() else "missing"


def _interval(result: dict[str, Any]) -> str:
    """' (95% interval 97.95%-99.35%)'; empty for bundles exported before 2026-12-03."""
    if "agreement_interval" not in result:
        return ""
    low, high = result["agreement_interval"]
    return f" (95% interval {low:.2%}-{high:.2%})"


def describe_agreement(result: dict[str, Any], texts: str = "rows") -> str:
    """'98.85% of 954 rows (95% interval 97.95%-99.35%)', for the gate's messages."""
    return f"{result['agreement']:.2%} of {result['rows']} {texts}{_interval(result)}"


def _check_line(result: dict[str, Any]) -> str:
    if "skipped" in result:
        line = f"check skipped: {result['skipped']}"
        on_cpu = result.get("cpu_provider")
        if on_cpu and "agreement" in on_cpu:
            line += f"; on the CPU provider: {_check_line(on_cpu)}"
        return line
    parts = [
        f"agreement {result['agreement']:.2%}{_interval(result)}",
        f"max |dlogit| {result['max_abs_logit_diff']:.1e}",
    ]
    if "macro_f1" in result:
        parts.append(f"macro-F1 {result['macro_f1']:.4f}")
    return ", ".join(parts)


def _rescoring(result: dict[str, Any], on_sample: dict[str, Any]) -> str:
    """'rows within 0.2 rescored by fp32 (2.1% of the test split, 3.0% of the check
    texts); alone it agreed on 99.16% / 98.85%'."""
    shares = [f"{result['rescored_share']:.1%} of the test split"]
    alone = [f"{result['agreement_without_rescoring']:.2%}"]
    if "rescored_share" in on_sample:
        shares.append(f"{on_sample['rescored_share']:.1%} of the check texts")
        alone.append(f"{on_sample['agreement_without_rescoring']:.2%}")
    return (
        f"rows within {result['rescore_margin']:g} rescored by fp32 ({', '.join(shares)}); "
        f"alone it agreed on {' / '.join(alone)}"
    )


def format_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> str:
    """Model version, provenance, and one line per variant with its size and check results."""
    checks = manifest.get("checks", {})
    valid = "yes" if manifest.get("valid") else f"NO ({manifest.get('invalid_reason', '?')})"
    lines = [
        f"bundle         {bundle_dir}",
        f"model version  {manifest['model_version']} (format {manifest['format_version']})",
        f"valid          {valid}",
        f"labels         {', '.join(manifest['labels'])}",
        f"max length     {manifest['max_length']} tokens",
        f"source         {manifest.get('source_checkpoint')} (base model {manifest.get('base_model')})",
        f"exported       {manifest.get('exported_at')}, opset {manifest.get('opset')}, "
        f"optimization {manifest.get('optimization', {}).get('level')}",
    ]
    if "texts" in checks:
        pytorch = checks.get("pytorch", {}).get("macro_f1")
        reference = f", PyTorch macro-F1 {pytorch:.4f}" if pytorch is not None else ""
        lines.append(f"checked on     {checks['texts']}{reference}")
    sample = checks.get("check_texts")
    if sample:
        lines.append(
            f"check texts    {sample['source']}: {sample['rows']} of {sample['rows_read']} rows "
            f"({sample['fingerprint'][:19]})"
        )
    if "calibration_texts" in manifest:
        lines.append(f"calibrated on  {manifest['calibration_texts']}")
    verdicts = checks.get("gate", {}).get("variants", {})
    for variant in [v for v in registry.NAMES if v in manifest["variants"]]:
        meta = manifest["variants"][variant]
        result = checks.get("variants", {}).get(variant)
        detail = _check_line(result) if result else "not checked"
        on_sample = (sample or {}).get("variants", {}).get(variant, {})
        if "agreement" in on_sample:
            detail += f"; check texts: agreement {on_sample['agreement']:.2%}"
        if result and "rescore_margin" in result:
            detail += "; " + _rescoring(result, on_sample)
        elif meta.get("rescore_margin") == 0:
            detail += "; rescoring off (exported with --rescore-margin 0)"
        if verdicts.get(variant, {}).get("passed") is False:
            # why: the macro-F1 drop or agreement the gate recorded for this graph
            gate = checks.get("gate", {})
            mine = f"{variant} "
            why = [m for m in gate.get("accuracy_drops", []) if m.startswith(mine)]
            if not why and any(m.startswith(mine) for m in gate.get("check_failures", [])):
                why = ["agreement on the check texts below the gate's minimum"]
            because = f" ({'; '.join(why)})" if why else ""
            detail += f"; FAILED the gate{because}, not chosen automatically"
        size = _size(bundle_dir / meta["file"])
        lines.append(f"  {variant:<5} {meta['file']:<16} {size:>9}  {detail}")
    libraries = manifest.get("libraries", {})
    lines.append("libraries      " + ", ".join(f"{k} {v}" for k, v in sorted(libraries.items())))
    return "\n".join(lines)
