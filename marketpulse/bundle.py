"""The model bundle: the one contract between export (writes) and runtime (reads).

A bundle is a directory that scores text without torch or transformers:

    BUNDLE_DIR/
      model.fp32.onnx     fp32 graph (reference, any provider)
      model.int8.onnx     dynamically quantized graph for the CPU provider
      model.fp16.onnx     fp16 graph for the CUDA provider (float32 inputs/outputs kept)
      tokenizer.json      Hugging Face `tokenizers` file
      labels.json         ["bearish", "bullish", "neutral"], index = logit position
      manifest.json       everything below

manifest.json holds the bundle format version, the model version, the source
checkpoint and base model, max length, opset, library versions, the sha256 of every
other file, the parity/accuracy results export measured, and `drift_reference`: the
label mix, confidence histogram and unknown-token-heavy count of the check texts scored
by the fp32 graph (layout: `marketpulse.drift.Profile.to_manifest`). Bundles exported
before it existed lack the key; they still score, without drift figures.

The model version is a content hash of everything that decides a score: every file
above (graphs, tokenizer.json, labels.json) plus the labels and max length. Equal
bundles share a version; re-exporting with another --max-length, tokenizer or graph
gives a new one, so the runtime's resume never skips rows scored differently.

Export publishes only bundles that passed its checks (`valid: true`); with
--allow-accuracy-drop the accepted drops are listed in `checks.gate.accuracy_drops`.
`valid: false` exists only in export's hidden staging copy while the checks run.
Each graph's own verdict is `checks.gate.variants[name]` = {"passed", "test_agreement",
"check_agreement", "check_rows"}; `Bundle.gate` reads it with the thresholds in
`checks.gate` (so a failed graph's reason quotes the figures that missed them), and
infers it for bundles exported before it was recorded (`gate_results`), so the runtime
never runs a graph that failed the gate unless asked to by name.
`load_bundle` refuses a manifest marked invalid and any file that does not match its
hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marketpulse import variants as registry
from marketpulse.checkpoint import TEST_SPLIT
from marketpulse.errors import MarketpulseError

FORMAT_VERSION = 2  # 2: model_version covers tokenizer.json and max_length too
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
LABELS = "labels.json"
DRIFT_REFERENCE = "drift_reference"  # manifest key; see marketpulse.drift


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_version(file_hashes: dict[str, str], labels: list[str], max_length: int) -> str:
    """Content hash of every bundle file, the labels and max length: what decides a score."""
    digest = hashlib.sha256()
    for name in sorted(file_hashes):
        digest.update(f"{name}={file_hashes[name]}\n".encode())
    digest.update(json.dumps({"labels": list(labels), "max_length": int(max_length)}).encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class GateResult:
    """One graph's verdict at export's agreement gate (`checks.gate.variants[name]`)."""

    passed: bool
    test_agreement: float | None = None  # top-1 agreement with PyTorch on the test split
    check_agreement: float | None = None  # ... on the check texts
    check_rows: int | None = None
    recorded: bool = True  # False: inferred for a bundle exported before verdicts existed
    min_agreement: float | None = None  # the gate's thresholds (`checks.gate`) ...
    max_f1_drop: float | None = None
    f1_drop: float | None = None  # ... and macro-F1 below PyTorch's on the test split

    def describe(self) -> str:
        """The figures behind the verdict, for a log line: a failed graph's figures that
        missed the gate ('82.0% of the test split'), else every agreement measured."""
        test = (self.test_agreement, "the test split")
        check = (self.check_agreement, f"{self.check_rows or 'the'} check texts")
        measured = [(value, where) for value, where in (test, check) if value is not None]
        if not self.passed and self.min_agreement is not None:
            low = [(v, where) for v, where in measured if v < self.min_agreement]
            f1 = self.f1_drop is not None and self.max_f1_drop is not None
            missed = [f"agrees with PyTorch on {_on(low, self.min_agreement)}"] if low else []
            if f1 and self.f1_drop > self.max_f1_drop:
                missed.append(f"macro-F1 {self.f1_drop:.4f} below PyTorch's on the test split")
            if missed:
                return " and ".join(missed)
        if measured:
            return f"agrees with PyTorch on {_on(measured)}"
        return "no agreement figure recorded"


def _on(figures: list[tuple[float, str]], threshold: float | None = None) -> str:
    """'95.0% of the test split and 92.3% of 26 check texts'; a figure below `threshold`
    gets the digits that keep it below (98.95% would round to 99.0%)."""
    return " and ".join(f"{_percent(value, threshold)} of {where}" for value, where in figures)


def _percent(value: float, threshold: float | None) -> str:
    for digits in (1, 2, 3):
        text = f"{value:.{digits}%}"
        if threshold is None or float(text.rstrip("%")) / 100 < threshold:
            return text
    return text


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def gate_results(manifest: dict[str, Any]) -> dict[str, GateResult]:
    """{graph: GateResult} for every graph of the bundle.

    The reference graph always passed: a failed parity check is never published. A
    graph missing from `checks.gate.variants` did not pass. Bundles exported before
    that field existed get `_inferred_gate`.
    """
    checks = manifest.get("checks") or {}
    names = [v for v in registry.NAMES if v in manifest.get("variants", {})]
    recorded = (checks.get("gate") or {}).get("variants")
    if not isinstance(recorded, dict):
        return {name: _inferred_gate(checks, name) for name in names}
    out = {}
    for name in names:
        entry = recorded.get(name)
        if not isinstance(entry, dict):
            out[name] = GateResult(passed=name == registry.REFERENCE, recorded=False)
            continue
        rows = _number(entry.get("check_rows"))
        out[name] = GateResult(
            passed=entry.get("passed") is True or name == registry.REFERENCE,
            test_agreement=_number(entry.get("test_agreement")),
            check_agreement=_number(entry.get("check_agreement")),
            check_rows=int(rows) if rows is not None else None,
            **_thresholds(checks, name),
        )
    return out


def _thresholds(checks: dict[str, Any], name: str) -> dict[str, float | None]:
    """The gate's thresholds and the graph's test-split F1 drop, None where not recorded."""
    gate = checks.get("gate") or {}
    figures = (checks.get("variants") or {}).get(name)
    return {
        "min_agreement": _number(gate.get("min_agreement")),
        "max_f1_drop": _number(gate.get("max_f1_drop")),
        "f1_drop": _number(figures.get("f1_drop")) if isinstance(figures, dict) else None,
    }


def _inferred_gate(checks: dict[str, Any], name: str) -> GateResult:
    """An older bundle's verdict: a published bundle's graphs passed, except those whose
    recorded figures (`checks.variants[name]`) fall below the recorded thresholds, which
    were published with --allow-accuracy-drop."""
    figures = (checks.get("variants") or {}).get(name) or {}
    agreement = _number(figures.get("agreement"))
    thresholds = _thresholds(checks, name)
    min_agreement, max_f1_drop = thresholds["min_agreement"], thresholds["max_f1_drop"]
    f1_drop = thresholds["f1_drop"]
    low = agreement is not None and min_agreement is not None and agreement < min_agreement
    dropped = f1_drop is not None and max_f1_drop is not None and f1_drop > max_f1_drop
    rows = _number(figures.get("rows"))
    on_test = str(checks.get("texts", "")).startswith(TEST_SPLIT)
    return GateResult(
        passed=name == registry.REFERENCE or not (low or dropped),
        test_agreement=agreement if on_test else None,
        check_agreement=None if on_test else agreement,
        check_rows=None if on_test or rows is None else int(rows),
        recorded=False,
        **thresholds,
    )


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk."""

    path: Path
    manifest: dict[str, Any] = field(repr=False)

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def version(self) -> str:
        return self.manifest["model_version"]

    @property
    def max_length(self) -> int:
        return int(self.manifest["max_length"])

    @property
    def variants(self) -> list[str]:
        return [v for v in registry.NAMES if v in self.manifest["variants"]]

    @property
    def drift_reference(self) -> dict[str, Any] | None:
        """The reference output profile (marketpulse.drift), None for older bundles."""
        return self.manifest.get(DRIFT_REFERENCE)

    @property
    def gate(self) -> dict[str, GateResult]:
        """Each graph's verdict at export's agreement gate (`gate_results`)."""
        return gate_results(self.manifest)

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER

    def rescore_margin(self, variant: str) -> float:
        """Rows whose top two probabilities under `variant` are closer than this are
        rescored by the fp32 graph (recorded by export for int8; 0: none, as in bundles
        exported before it was)."""
        if variant == registry.REFERENCE or registry.REFERENCE not in self.manifest["variants"]:
            return 0.0
        value = self.manifest["variants"].get(variant, {}).get("rescore_margin")
        return float(value) if isinstance(value, int | float) and 0 < value < 1 else 0.0

    def variant_path(self, variant: str) -> Path:
        if variant not in self.manifest["variants"]:
            have = ", ".join(self.variants)
            raise MarketpulseError(
                f"bundle {self.path} has no {variant!r} graph (has: {have}); "
                f"re-export with --variants including {variant}"
            )
        return self.path / self.manifest["variants"][variant]["file"]


def write_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file in the bundle, stamp format and model version, write manifest.json.

    `manifest` must carry at least `labels`, `max_length` and `variants`
    ({variant: {...metadata}}); file names and hashes are filled in here.
    The manifest is written last, through a temporary file, so a crash mid-export
    never leaves a bundle that looks complete.
    """
    bundle_dir = Path(bundle_dir)
    labels = list(manifest["labels"])
    (bundle_dir / LABELS).write_text(json.dumps(labels) + "\n")
    files = {
        p.name: sha256_file(p)
        for p in sorted(bundle_dir.iterdir())
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }
    out = dict(manifest)
    out["format_version"] = FORMAT_VERSION
    out["labels"] = labels
    out["files"] = files
    out["model_version"] = model_version(files, labels, manifest["max_length"])
    for variant, meta in out["variants"].items():
        meta["file"] = registry.get(variant).file
        if meta["file"] not in files:
            raise MarketpulseError(f"export bug: {meta['file']} missing from {bundle_dir}")
    out.setdefault("valid", True)
    tmp = bundle_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    tmp.replace(bundle_dir / MANIFEST)
    return out


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    path = Path(bundle_dir) / MANIFEST
    if not path.is_file():
        raise MarketpulseError(
            f"{bundle_dir} is not a marketpulse bundle (no {MANIFEST}); "
            "create one with `marketpulse export --model CHECKPOINT --out DIR`"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MarketpulseError(
            f"{path} is unreadable ({exc}); re-export the bundle with `marketpulse export`"
        ) from exc
    if not isinstance(manifest, dict):
        raise MarketpulseError(f"{path} is not a JSON object; re-export the bundle")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise MarketpulseError(
            f"{bundle_dir} has bundle format {manifest.get('format_version')!r}, this "
            f"marketpulse reads format {FORMAT_VERSION}; re-export it with this version"
        )
    problem = _manifest_problem(manifest)
    if problem:
        raise MarketpulseError(
            f"{path} is damaged ({problem}); re-export the bundle with `marketpulse export`"
        )
    return manifest


def _manifest_problem(manifest: dict) -> str | None:
    """Why the keys every reader uses cannot be used as they are, or None."""
    labels, max_length = manifest.get("labels"), manifest.get("max_length")
    files, variants = manifest.get("files"), manifest.get("variants")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        return "'labels' is not a list of label names"
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
        return "'max_length' is not a positive integer"
    if not isinstance(files, dict) or not all(isinstance(h, str) for h in files.values()):
        return "'files' is not a map of file names to hashes"
    if not isinstance(manifest.get("model_version"), str):
        return "'model_version' is not a string"
    if not isinstance(variants, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("file"), str) for v in variants.values()
    ):
        return "'variants' does not name each graph's file"
    for name, variant in variants.items():
        margin = variant.get("rescore_margin", 0)
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0 <= margin < 1:
            return f"'variants.{name}.rescore_margin' is not a number in [0, 1)"
    checks = manifest.get("checks")
    gate = checks.get("gate") if isinstance(checks, dict) else None
    gated = gate.get("variants") if isinstance(gate, dict) else None
    for name, result in (gated if isinstance(gated, dict) else {}).items():
        if not isinstance(result, dict) or not isinstance(result.get("passed", False), bool):
            return f"'checks.gate.variants.{name}.passed' is not true or false"
    return None


def verify_bundle(bundle_dir: Path) -> list[str]:
    """Return a list of problems (empty when every file matches its recorded hash)."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    problems = []
    for name, expected in sorted(manifest.get("files", {}).items()):
        path = bundle_dir / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif sha256_file(path) != expected:
            problems.append(f"{name}: sha256 mismatch (file altered or corrupt)")
    labels_file = bundle_dir / LABELS
    if labels_file.is_file() and not problems:
        if json.loads(labels_file.read_text()) != manifest["labels"]:
            problems.append(f"{MANIFEST}: labels differ from {LABELS}")
    if not problems:
        expected = model_version(manifest["files"], manifest["labels"], manifest["max_length"])
        if expected != manifest.get("model_version"):
            problems.append(
                f"{MANIFEST}: model_version does not match the files, labels and max_length"
            )
    return problems


def load_bundle(bundle_dir: Path, *, allow_invalid: bool = False) -> Bundle:
    """Open a bundle after checking every hash; raise MarketpulseError saying the fix."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise MarketpulseError(
            f"bundle directory {bundle_dir} not found; pass --bundle with a directory "
            "made by `marketpulse export`"
        )
    manifest = read_manifest(bundle_dir)
    problems = verify_bundle(bundle_dir)
    if problems:
        raise MarketpulseError(
            f"bundle {bundle_dir} is corrupt ({'; '.join(problems)}); re-export it with "
            "`marketpulse export`"
        )
    if not manifest.get("valid", False) and not allow_invalid:
        reason = manifest.get("invalid_reason", "it failed export's accuracy checks")
        raise MarketpulseError(
            f"bundle {bundle_dir} is marked invalid ({reason}); re-export it, or pass "
            "--allow-accuracy-drop to export if the drop is acceptable"
        )
    return Bundle(path=bundle_dir, manifest=manifest)
