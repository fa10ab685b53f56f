"""The ONNX session: choose a provider and graph, run batches, return probabilities.

`Predictor(bundle, variant=None, device="cpu", threads=None)` is the one way any stage
runs a bundle. It needs onnxruntime, tokenizers and numpy only.

Placement rules (`choose_placement`):
- `cpu` runs the int8 graph (fp32 when the bundle has no int8) on the CPU provider.
- `cuda` runs the fp16 graph (fp32 when absent) on the CUDA provider with IO binding.
  (The order is `marketpulse.variants.preference(device)`.)
  No working CUDA provider is an error, never a silent CPU run.
- `auto` takes CUDA when onnxruntime offers a working CUDA provider, else CPU, and
  says which and why in `Predictor.reason`.
- A named `variant` overrides the preference; `variant_reason` says why it was named
  (score's `--variant auto` names the graph it measured fastest: runtime/autovariant.py).

Thread rule (CPU): batch-parallel, not op-parallel. The session has one intra-op and
one inter-op thread, and `threads` batches (default: the cores this process may use)
run at once, each on its own core; `InferenceSession.run` is thread-safe and releases
the GIL. Small length-sorted batches then stay in each core's cache and no core waits
at a per-operator barrier, which measured 1.7x more rows per CPU-second than one batch
split over two intra-op threads on this project's 2-core machine. CUDA runs one batch
at a time on one stream. Tokenizing is the caller's (`encoder`, batching.py, in `threads`
slices at once); the runtime runs it ahead of inference.

Batch size: a budget of padded tokens, not rows (see batching.py); the default is
small on CPU (cache-sized) and large on CUDA (occupancy).

Rescoring (CPU, quantized graphs): int8 changes a label almost only where the model
hesitates. A row whose top two int8 probabilities are closer than the bundle's
`rescore_margin` (export's `--rescore-margin`, recorded per graph) is scored again by
the fp32 graph, and fp32's probabilities are kept (`run_batches`, `rescored`). On the
twitter model, a margin of 0.2 rescored 0.8-3.3% of tweets and review snippets and
lifted agreement with fp32 from 99.1-99.3% to 99.65-100% (README, Export). The choice
depends on the row's own int8 probabilities, so a row scores the same in any batch (up
to int8's own float noise, 1e-6, for a row that lands exactly on the margin). CPU only:
on CUDA the fp16 graph runs alone.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from marketpulse import cpu, variants
from marketpulse.bundle import Bundle, load_bundle
from marketpulse.cpu import available_cores
from marketpulse.errors import MarketpulseError, first_line
from marketpulse.inference.batching import (
    DEFAULT_MAX_BATCH_ROWS,
    Encoded,
    TextEncoder,
    plan_batches,
    softmax,
)
from marketpulse.variants import CPU, CUDA

DEVICES = ("auto", "cpu", "cuda")
# ORT fusions left out on the CPU provider. SkipLayerNormalization (residual Add + bias +
# LayerNorm in one kernel) ran slower than the unfused Add + LayerNormalization: on the
# fine-tuned MiniLM int8 graph, one thread, 1,000 tweets at 1,024 tokens per batch,
# best of 6 interleaved runs: 360 -> 404 rows/s (onnxruntime 1.32, AVX512-VNNI), labels
# equal on 99.9% (int8 activation rounding moves with the float rounding).
CPU_DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]
# Padded tokens per batch: fits a core's L2 on CPU; fills the GPU on CUDA.
DEFAULT_BATCH_TOKENS = {"cpu": 1024, "cuda": 32768}
# On CPUs with AMX, smaller batches run faster: `marketpulse score` on 3,000 tweets (the
# twitter model's bundle, 2-core Xeon with AMX-INT8, three interleaved rounds) ran int8 at
# 1,021-1,111 rows/s with 256-512 tokens against 944-1,040 with 1,024 and 763-809 with
# 4,096; fp32 at 450-468 against 432-438.
AMX_BATCH_TOKENS = 512


def default_batch_tokens(device: str) -> int:
    """Padded tokens per batch on `device` (cpu, cuda) when --batch-tokens is not given."""
    if device == "cpu" and cpu.has_amx():
        return AMX_BATCH_TOKENS
    return DEFAULT_BATCH_TOKENS[device]


class Batched(NamedTuple):
    """What `Predictor.run_batches` returns, rows in input order."""

    probs: np.ndarray  # float32 (n, n_labels); zeros where failed
    failed: np.ndarray  # bool (n,): ONNX Runtime failed on the row, even alone
    error: Exception | None  # the last error, for the message
    rescored: np.ndarray  # bool (n,): probabilities from the fp32 graph (rescore margin)


def top_two_margin(probs: np.ndarray) -> np.ndarray:
    """Per row, the top probability minus the second (1.0 with a single label)."""
    if probs.shape[1] < 2:
        return np.ones(len(probs), dtype=probs.dtype)
    top = np.partition(probs, -2, axis=1)
    return top[:, -1] - top[:, -2]


def hesitates(probs: np.ndarray, margin: float) -> np.ndarray:
    """The rescoring rule: rows whose top two probabilities are closer than `margin`."""
    return top_two_margin(probs) < margin


def rescored_logits(
    quantized: np.ndarray, reference: np.ndarray, margin: float
) -> tuple[np.ndarray, np.ndarray]:
    """(logits, rescored mask): `reference`'s rows where `quantized` hesitates, the rule
    `Predictor.run_batches` applies, for export to gate the graph as it will run."""
    rescored = hesitates(softmax(quantized), margin)
    return np.where(rescored[:, None], reference, quantized), rescored


def _row_by_row_on_failure(score, idx: np.ndarray, errors: list[Exception]) -> list[int]:
    """`score(idx)` on the batch; when it raises, `score` on each row alone, so one bad
    row cannot sink its batch mates. Returns the rows that fail even alone; every error
    goes to `errors`."""
    try:
        score(idx)
        return []
    except Exception as exc:
        errors.append(exc)
    alone_failed = []
    for i in idx:
        try:
            score(np.array([i]))
        except Exception as exc:
            errors.append(exc)
            alone_failed.append(i)
    return alone_failed


def rescore_margin_for(
    bundle: Bundle, provider: str, variant: str, requested: float | None = None
) -> float:
    """The rescore margin a graph runs with: `requested` (score's --rescore-margin), else
    the bundle's; 0 where nothing is rescored (fp32 itself, any graph on CUDA, a bundle
    without fp32)."""
    if requested is not None and not 0 <= requested < 1:
        raise MarketpulseError(
            f"--rescore-margin {requested} is outside 0..1; pass 0 to never rescore, or a "
            "probability gap such as 0.2"
        )
    if provider != CPU or variant == variants.REFERENCE:
        return 0.0
    if variants.REFERENCE not in bundle.variants:
        return 0.0
    return bundle.rescore_margin(variant) if requested is None else float(requested)


@dataclass(frozen=True)
class Placement:
    device: str  # "cpu" or "cuda"
    provider: str
    variant: str
    reason: str


def cuda_provider_available() -> bool:
    import onnxruntime as ort

    return CUDA in ort.get_available_providers()


def choose_placement(
    bundle: Bundle,
    device: str = "cpu",
    variant: str | None = None,
    probe: bool = True,
    variant_reason: str | None = None,
) -> Placement:
    """Pick device, provider and graph before any session is built; raise saying the fix.

    `probe=False` plans `cuda` without checking this machine for a CUDA provider: the Ray
    driver decides for GPU workers it may not share a machine with. `variant_reason`
    replaces "--variant NAME" in the reason when the caller chose the graph itself."""
    import onnxruntime as ort

    if device not in DEVICES:
        raise MarketpulseError(f"unknown device {device!r}; pass --device auto, cpu or cuda")
    installed = ", ".join(ort.get_available_providers())
    if device == "cuda":
        if probe and not cuda_provider_available():
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
        preferred = variants.preference(device)
        choices = [v for v in preferred if v in have]
        if not choices:
            raise MarketpulseError(
                f"bundle {bundle.path} has no graph for {device} (has: {', '.join(have)}); "
                f"re-export with --variants {preferred[0]}"
            )
        # A graph that failed export's agreement gate runs only when named (--variant).
        failed = [v for v in choices if not bundle.gate[v].passed]
        choices = [v for v in choices if v not in failed] or choices[-1:]
        variant = choices[0]
        if failed:
            reason += f"; {', '.join(failed)} failed export's gate, using {variant}"
        elif variant != preferred[0]:
            reason += f"; bundle has no {preferred[0]} graph, using {variant}"
        if variant_reason:
            reason += f"; {variant_reason}"
    else:
        bundle.variant_path(variant)  # raises naming the variants the bundle has
        reason += f"; {variant_reason or f'--variant {variant}'}"
    provider = CUDA if device == "cuda" else CPU
    return Placement(device=device, provider=provider, variant=variant, reason=reason)


def load_cuda_libraries() -> None:
    """Let onnxruntime-gpu find the CUDA and cuDNN libraries of pip's nvidia-* wheels.

    `pip install 'onnxruntime-gpu[cuda,cudnn]'` (what `make setup-gpu` does) puts them in
    site-packages, where the dynamic loader does not look; onnxruntime's `preload_dlls`
    loads them first. A missing library is not an error here: the session start that
    follows reports it. preload_dlls prints its warnings, so they go to stderr, never
    into `--json` output.
    """
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)  # onnxruntime >= 1.21
    if preload is None:
        return
    with contextlib.redirect_stdout(sys.stderr):
        try:
            preload()
        except Exception:  # the session start reports what is missing
            pass


def default_session_options():
    """The runtime's session options: every graph optimization, one thread per session."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Parallelism comes from concurrent batches (see the module docstring).
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only; provider choice is reported by the caller
    return opts


class Predictor:
    """Runs one bundle graph on one provider; `run` may be called from several threads."""

    def __init__(
        self,
        bundle: Bundle | str | Path,
        variant: str | None = None,
        device: str = "cpu",
        threads: int | None = None,
        variant_reason: str | None = None,
        session_options=None,
        rescore_margin: float | None = None,
    ):
        """`session_options`: an `onnxruntime.SessionOptions` to build the session with
        instead of `default_session_options()` (a bench turns profiling on); the CUDA ->
        CPU fallback session uses it too. `rescore_margin`: rows closer than this between
        their top two probabilities are rescored by fp32 (None: the bundle's, 0: never;
        CPU only, see the module docstring)."""
        import onnxruntime as ort

        if session_options is None:
            session_options = default_session_options()

        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(Path(bundle))
        placement = choose_placement(self.bundle, device, variant, variant_reason=variant_reason)
        self.threads = int(threads) if threads else available_cores()
        if self.threads < 1:
            raise MarketpulseError(f"--threads must be at least 1, got {threads}")
        path = self.bundle.variant_path(placement.variant)
        providers = [placement.provider] if placement.provider == CPU else [CUDA, CPU]
        if placement.provider == CUDA:
            load_cuda_libraries()
        try:
            session = ort.InferenceSession(
                str(path),
                sess_options=session_options,
                providers=providers,
                disabled_optimizers=CPU_DISABLED_OPTIMIZERS if placement.provider == CPU else None,
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise MarketpulseError(
                f"cannot load {path} ({first_line(exc)[:200]}); re-export the bundle "
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
            variant_reason = f"CUDA failed to start; {fallback.variant}, the CPU preference"
            session = self._cpu_session(placement.variant, session_options)
        self.session = session
        self.rescore_margin = rescore_margin_for(
            self.bundle, placement.provider, placement.variant, rescore_margin
        )
        self._rescorer = None
        if self.rescore_margin:
            self._rescorer = self._cpu_session(variants.REFERENCE, session_options)
        self.device = placement.device
        self.provider = placement.provider
        self.variant = placement.variant
        self.reason = placement.reason
        # why this graph, for runs.variant_reason: what the caller said, else the rule
        self.variant_reason = variant_reason or (
            f"--variant {variant}" if variant else f"the {self.device} preference"
        )
        self.labels = self.bundle.labels
        self.encoder = TextEncoder(
            self.bundle.tokenizer_path, self.bundle.max_length, threads=self.threads
        )
        self._inputs = {i.name for i in session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - self._inputs
        if missing:
            raise MarketpulseError(
                f"{path} lacks inputs {sorted(missing)}; re-export it with `marketpulse export`"
            )
        self._output = session.get_outputs()[0].name
        self.runners = self.threads if self.device == "cpu" else 1
        self.batch_tokens = default_batch_tokens(self.device)
        self._pool = None

    def split_rescoring(self) -> tuple[Predictor, Predictor] | None:
        """(this graph alone, the fp32 graph) as predictors on this one's sessions, for a
        caller that picks the graph per text (explain); None when nothing is rescored."""
        if self._rescorer is None:
            return None
        alone = copy.copy(self)
        alone._rescorer, alone.rescore_margin, alone._pool = None, 0.0, None
        reference = copy.copy(alone)
        reference.session, reference.variant = self._rescorer, variants.REFERENCE
        return alone, reference

    def _cpu_session(self, variant: str, session_options):
        """A CPU session on one of the bundle's graphs, or the error saying to re-export."""
        import onnxruntime as ort

        path = self.bundle.variant_path(variant)
        try:
            return ort.InferenceSession(
                str(path),
                sess_options=session_options,
                providers=[CPU],
                disabled_optimizers=CPU_DISABLED_OPTIMIZERS,
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise MarketpulseError(
                f"cannot load {path} ({first_line(exc)[:200]}); re-export the bundle "
                "with `marketpulse export`"
            ) from exc

    def describe(self) -> str:
        """One line for the log: which provider and graph run, and why."""
        threads = f", {self.runners} batches at a time" if self.device == "cpu" else ""
        rescoring = (
            f", rows whose top two probabilities are within {self.rescore_margin:g} "
            f"rescored by {variants.REFERENCE}"
            if self._rescorer is not None
            else ""
        )
        return (
            f"{self.provider} running the {self.variant} graph{threads}{rescoring} ({self.reason})"
        )

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, session=None) -> np.ndarray:
        """Logits (float32, (batch, n_labels)) for one padded batch, of this predictor's
        graph (the rescoring fp32 session when `session` is given: CPU only)."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        if session is not None or self.provider != CUDA:
            return (session or self.session).run([self._output], feeds)[0]
        # IO binding: inputs copied to the GPU once, output fetched once, no
        # per-run allocation of host staging buffers by the session.
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        binding.bind_output(self._output, "cuda")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def run_batches(
        self,
        encoded: Encoded,
        batch_tokens: int | None = None,
        max_rows: int = DEFAULT_MAX_BATCH_ROWS,
    ) -> Batched:
        """Probabilities in input order, failed and rescored rows, for tokenized rows.

        A batch that raises is retried row by row so one bad row cannot sink its batch
        mates; rows that still fail are flagged, with zero probabilities. Then, with a
        rescore margin, the rows that hesitate go through the fp32 graph (`_rescore`).
        """
        n = len(encoded.lengths)
        probs = np.zeros((n, len(self.labels)), dtype=np.float32)
        failed = np.zeros(n, dtype=bool)
        errors: list[Exception] = []
        pad_id = self.encoder.pad_id

        def score(rows: np.ndarray) -> None:
            probs[rows] = softmax(self.run(*encoded.batch(rows, pad_id)))

        def run_batch(idx: np.ndarray) -> None:
            failed[_row_by_row_on_failure(score, idx, errors)] = True

        budget = batch_tokens or self.batch_tokens
        self._map(run_batch, plan_batches(encoded.lengths, budget, max_rows))
        rescored = np.zeros(n, dtype=bool)
        if self._rescorer is not None and n:
            self._rescore(encoded, probs, failed, rescored, errors, budget, max_rows)
        return Batched(probs, failed, errors[-1] if errors else None, rescored)

    def _map(self, run_batch, batches: list[np.ndarray]) -> None:
        """`run_batch` on every batch: `runners` at a time on the CPU, else in turn."""
        if self.runners == 1 or len(batches) == 1:
            for idx in batches:
                run_batch(idx)
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.runners, thread_name_prefix="onnx")
        list(self._pool.map(run_batch, batches))

    def _rescore(self, encoded, probs, failed, rescored, errors, budget, max_rows) -> None:
        """Replace, in place, the probabilities of rows within the rescore margin by the
        fp32 graph's. A batch fp32 fails on is retried row by row, as `run_batches` does,
        so a row's outcome never depends on its batch mates; a row fp32 fails on alone
        keeps its quantized probabilities (a valid score) and is not counted rescored."""
        hesitant = np.flatnonzero(~failed & hesitates(probs, self.rescore_margin))
        if not len(hesitant):
            return
        pad_id = self.encoder.pad_id

        def rescore(rows: np.ndarray) -> None:
            logits = self.run(*encoded.batch(rows, pad_id), session=self._rescorer)
            probs[rows] = softmax(logits)
            rescored[rows] = True

        def run_batch(idx: np.ndarray) -> None:
            _row_by_row_on_failure(rescore, hesitant[idx], errors)

        self._map(run_batch, plan_batches(encoded.lengths[hesitant], budget, max_rows))

    def predict_encoded(
        self,
        encoded: Encoded,
        batch_tokens: int | None = None,
        max_rows: int = DEFAULT_MAX_BATCH_ROWS,
    ) -> np.ndarray:
        """Probabilities (float32, (n, n_labels)) in input order for tokenized rows."""
        probs, failed, error, _ = self.run_batches(encoded, batch_tokens, max_rows)
        if failed.any():
            raise MarketpulseError(
                f"ONNX Runtime failed on {int(failed.sum())} row(s) ({error}); check the bundle "
                "with `marketpulse inspect`, or re-export it"
            ) from error
        return probs

    def predict_proba(self, texts: list[str], batch_tokens: int | None = None) -> np.ndarray:
        """Softmax probabilities (float32, (n, n_labels)), columns in `self.labels` order."""
        if not texts:
            return np.empty((0, len(self.labels)), dtype=np.float32)
        return self.predict_encoded(self.encoder.encode(list(texts)), batch_tokens)

    def predict(self, texts: list[str]) -> list[str]:
        """Label names, argmax of `predict_proba`."""
        probs = self.predict_proba(texts)
        return [self.labels[i] for i in probs.argmax(axis=1)]
