"""The transformers Trainer set-up that fine-tuning (fit.py) and adaptation (adapt.py) share.

Both stages run one `transformers.Trainer` the same way: the same hyperparameters
mapped onto `TrainingArguments` (`training_arguments`), progress printed as one stderr
line per logging step by `ProgressLog` instead of Trainer's own printer, transformers'
load-time warnings silenced while a model loads, and the library versions recorded in
the JSON each writes. What differs (the model, the data collator, evaluation and
checkpointing) stays in each stage. Importing this module loads neither torch nor
transformers.
"""

from __future__ import annotations

import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

WORK_DIR = "_trainer"  # Trainer's output_dir inside the run's directory; removed after the run


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def quiet_transformers():
    """Silence transformers' "newly initialized" warnings; the stages log what matters."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)


def training_arguments(cfg, work: Path, device: str, precision: str, n_train: int, **settings):
    """`TrainingArguments` from `cfg`'s hyperparameters plus the stage's own `settings`.

    `cfg` is a TrainConfig or an AdaptConfig: both carry epochs, learning_rate,
    batch_size, warmup_ratio, weight_decay and seed. Trainer writes its own files under
    `work`; loss is logged about five times an epoch, at least every 50 steps.
    """
    from transformers import TrainingArguments

    steps_per_epoch = max(1, -(-n_train // cfg.batch_size))
    return TrainingArguments(
        output_dir=str(work),
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        warmup_ratio=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=max(1, min(50, steps_per_epoch // 5)),
        logging_strategy="steps",
        report_to=[],
        disable_tqdm=True,
        use_cpu=device == "cpu",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        dataloader_num_workers=0,
        **settings,
    )


def print_progress_only(trainer):
    """Drop Trainer's own PrinterCallback: the ProgressLog in its callbacks prints instead."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def make_progress_callback():
    """A fresh `ProgressLog` (a TrainerCallback); build one per Trainer."""
    from transformers import TrainerCallback

    class ProgressLog(TrainerCallback):
        """One stderr line per logging step (loss, rate, ETA) and per evaluation.

        `curve` keeps one entry per evaluation (epoch, validation macro-F1, accuracy, loss,
        seconds since the start) for metrics.json and the printed report.
        """

        def __init__(self):
            self.curve: list[dict] = []
            # the epoch Trainer keeps: the first strictly best unrounded macro-F1
            self.best: tuple[float, float] | None = None  # (macro-F1, epoch)

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            elapsed = time.perf_counter() - self.started
            if "loss" in logs:
                rate = state.global_step / max(elapsed, 1e-9)
                eta = (state.max_steps - state.global_step) / max(rate, 1e-9)
                log(
                    f"step {state.global_step}/{state.max_steps} epoch {state.epoch:.2f} "
                    f"loss {logs['loss']:.4f} lr {logs.get('learning_rate', 0):.2e} "
                    f"{rate * args.train_batch_size:.1f} rows/s ETA {eta:.0f}s"
                )
            elif "eval_macro_f1" in logs:
                if self.best is None or logs["eval_macro_f1"] > self.best[0]:
                    self.best = (logs["eval_macro_f1"], round(state.epoch, 2))
                self.curve.append(
                    {
                        "epoch": round(state.epoch, 2),
                        "macro_f1": round(logs["eval_macro_f1"], 4),
                        "accuracy": round(logs["eval_accuracy"], 4),
                        "loss": round(logs.get("eval_loss", float("nan")), 4),
                        "seconds": round(elapsed, 1),
                    }
                )
                log(
                    f"validation epoch {state.epoch:.2f}: macro-F1 {logs['eval_macro_f1']:.4f} "
                    f"accuracy {logs['eval_accuracy']:.4f} loss {logs.get('eval_loss', float('nan')):.4f}"
                )

    return ProgressLog()


def library_versions() -> dict:
    """The versions that decide what a run computes, for metrics.json and adapt.json."""
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
