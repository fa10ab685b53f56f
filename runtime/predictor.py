"""The ONNX session: choose a provider and graph, run batches, return probabilities.

`Predictor(bundle, variant=None, device="cpu", threads=None)` is the one way any stage
runs a bundle. It needs onnxruntime, tokenizers and numpy only.

Placement rules (`choose_placement`):
- `cpu` runs the int8 graph (fp32 when the bundle has no int8) on the CPU provider.
- `cuda` runs the fp16 graph (fp32 when absent) on the CUDA provider with IO binding.
  No working CUDA provider is an error, never a silent CPU run.
- `auto` takes CUDA when onnxruntime offers a working CUDA provider, else CPU, and
  says which and why in `Predictor.reason`.

Thread rule: ONNX Runtime gets `threads` intra-op threads (default: the cores this
process may use) and one inter-op thread; the caller keeps tokenizing on its own thread
so the two never fight over more cores than exist.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from marketpulse.runtime.batching import (
    DEFAULT_BATCH_TOKENS,
    DEFAULT_MAX_BATCH_ROWS,
    Encoded,
    TextEncoder,
    pad,
    plan_batches,
    softmax,
)

from marketpulse.bundle import Bundle, load_bundle
from marketpulse.errors import MarketpulseError

DEVICES = ("auto", "cpu", "cuda")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# Preferred graph per device, best first.
VARIANT_PREFERENCE = {"cpu": ("int8", "fp32"), "cuda": ("fp16", "fp32")}


def available_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Placement:
    device: str  # "cpu" or "cuda"
    provider: str
    variant: str
    reason: str


def cuda_provider_available() -> bool:
    import onnxruntime as ort

    return CUDA in ort.get_available_providers()


def choose_placement(bundle: Bundle, device: str = "cpu", variant: str | None = None) -> Placement:
    """Pick device, provider and graph before any session is built; raise saying the fix."""
    import onnxruntime as ort

    if device not in DEVICES:
        raise MarketpulseError(f"unknown device {device!r}; pass --device auto, cpu or cuda")
    installed = ", ".join(ort.get_available_providers())
    if device == "cuda":
        if not cuda_provider_available():
            raise MarketpulseError(
                f"--device cuda but onnxruntime has no CUDA provider (installed: {installed}); "
                "run `make setup-gpu` on a machine with an NVIDIA GPU, or pass --device cpu"
            )
        reason = "--device cuda"
    elif device == "auto":
        if cuda_provider_available():
            device, reason = "cuda", "--device auto found the CUDA provider"
        else:
            device = "cpu"
            reason = f"--device auto found no CUDA provider (installed: {installed}), using CPU"
    else:
        reason = "--device cpu"
    if variant is None:
        have = bundle.variants
        choices = [v for v in VARIANT_PREFERENCE[device] if v in have]
        if not choices:
            raise MarketpulseError(
                f"bundle {bundle.path} has no graph for {device} (has: {', '.join(have)}); "
                f"re-export with --variants {VARIANT_PREFERENCE[device][0]}"
            )
        variant = choices[0]
        if variant != VARIANT_PREFERENCE[device][0]:
            reason += f"; bundle has no {VARIANT_PREFERENCE[device][0]} graph, using {variant}"
    else:
        bundle.variant_path(variant)  # raises naming the variants the bundle has
        reason += f"; --variant {variant}"
    provider = CUDA if device == "cuda" else CPU
    return Placement(device=device, provider=provider, variant=variant, reason=reason)


def _session_options(threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only; provider choice is reported by the caller
    return opts


class Predictor:
    """Runs one bundle graph on one provider. Not thread-safe for concurrent `run` calls."""

    def __init__(
        self,
        bundle: Bundle | str | Path,
        variant: str | None = None,
        device: str = "cpu",
        threads: int | None = None,
    ):
        import onnxruntime as ort

        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(Path(bundle))
        placement = choose_placement(self.bundle, device, variant)
        self.threads = int(threads) if threads else available_cores()
        if self.threads < 1:
            raise MarketpulseError(f"--threads must be at least 1, got {threads}")
        path = self.bundle.variant_path(placement.variant)
        providers = [placement.provider] if placement.provider == CPU else [CUDA, CPU]
        try:
            session = ort.InferenceSession(
                str(path), sess_options=_session_options(self.threads), providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise MarketpulseError(
                f"cannot load {path} ({str(exc).splitlines()[0][:200]}); re-export the bundle "
                "with `marketpulse export`"
            ) from exc
        if placement.provider == CUDA and session.get_providers()[0] != CUDA:
            if device == "cuda":
                raise MarketpulseError(
                    "--device cuda but the CUDA provider failed to start (check the NVIDIA "
                    "driver and CUDA/cuDNN libraries onnxruntime-gpu needs), or pass --device cpu"
                )
            # auto: CUDA was installed but unusable; rebuild on CPU with the CPU graph.
            fallback = choose_placement(self.bundle, "cpu", variant)
            placement = Placement(
                device="cpu",
                provider=CPU,
                variant=fallback.variant,
                reason="--device auto: CUDA provider installed but failed to start, using CPU",
            )
            session = ort.InferenceSession(
                str(self.bundle.variant_path(placement.variant)),
                sess_options=_session_options(self.threads),
                providers=[CPU],
            )
        self.session = session
        self.device = placement.device
        self.provider = placement.provider
        self.variant = placement.variant
        self.reason = placement.reason
        self.labels = self.bundle.labels
        self.encoder = TextEncoder(self.bundle.tokenizer_path, self.bundle.max_length)
        self._inputs = {i.name for i in session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - self._inputs
        if missing:
            raise MarketpulseError(
                f"{path} lacks inputs {sorted(missing)}; re-export it with `marketpulse export`"
            )
        self._output = session.get_outputs()[0].name

    def describe(self) -> str:
        """One line for the log: which provider and graph run, and why."""
        threads = f", {self.threads} threads" if self.device == "cpu" else ""
        return f"{self.provider} running the {self.variant} graph{threads} ({self.reason})"

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Logits (float32, (batch, n_labels)) for one padded batch."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        if self.provider != CUDA:
            return self.session.run([self._output], feeds)[0]
        # IO binding: inputs copied to the GPU once, output fetched once, no
        # per-run allocation of host staging buffers by the session.
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        binding.bind_output(self._output, "cuda")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def predict_encoded(
        self,
        encoded: Encoded,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        max_rows: int = DEFAULT_MAX_BATCH_ROWS,
    ) -> np.ndarray:
        """Probabilities (float32, (n, n_labels)) in input order for tokenized rows."""
        n = len(encoded.ids)
        probs = np.empty((n, len(self.labels)), dtype=np.float32)
        for idx in plan_batches(encoded.lengths, batch_tokens, max_rows):
            input_ids, mask = pad([encoded.ids[i] for i in idx], self.encoder.pad_id)
            probs[idx] = softmax(self.run(input_ids, mask))
        return probs

    def predict_proba(
        self, texts: list[str], batch_tokens: int = DEFAULT_BATCH_TOKENS
    ) -> np.ndarray:
        """Softmax probabilities (float32, (n, n_labels)), columns in `self.labels` order."""
        if not texts:
            return np.empty((0, len(self.labels)), dtype=np.float32)
        return self.predict_encoded(self.encoder.encode(list(texts)), batch_tokens)

    def predict(self, texts: list[str]) -> list[str]:
        """Label names, argmax of `predict_proba`."""
        probs = self.predict_proba(texts)
        return [self.labels[i] for i in probs.argmax(axis=1)]
