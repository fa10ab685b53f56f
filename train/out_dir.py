"""Where a training is built and how it replaces --out: whole, or not at all.

`check_train_out` refuses an --out that holds anything but an earlier training's output,
before any row is read. `staged_out` yields a new directory beside --out to write the
checkpoint in (trainer.py and tune.py write everything there); it replaces --out only
once the block succeeds, so a failed or interrupted run leaves an earlier training in
--out as it was, never mixed with this run's files. What the directory holds is
`marketpulse.checkpoint`'s to define; this module only stages and swaps it.

The directory is `checkpoint/` inside an `owned_folder` `.<out>.train-*` whose
`owner.lock` the run holds: a run killed with `kill -9` cannot remove it, so each run
first removes those of dead runs beside --out (`sweep_dead_runs`, a line for each), never
a live run's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from marketpulse.checkpoint import (
    METRICS,
    TEST_SPLIT,
    VALIDATION_SPLIT,
    holds_training,
    out_in_use,
)
from marketpulse.errors import MarketpulseError
from marketpulse.owned_folders import owned_folder, sweep_dead_runs
from marketpulse.staging import publishable, replace_dir
from marketpulse.train.hf_trainer import log


def check_train_out(out: Path) -> None:
    """Refuse an --out that holds anything but an earlier training's output (which this
    one replaces once it has succeeded, as export replaces a bundle), before any row is read."""
    if out_in_use(out) and not holds_training(out):
        raise MarketpulseError(
            f"--out {out} is not empty and holds no earlier `marketpulse train` output "
            f"(no {METRICS} with a checkpoint format); pass a new or empty directory"
        )


@contextmanager
def staged_out(out: Path) -> Iterator[Path]:
    """Yield a new directory beside `out` to build the checkpoint in; it replaces `out`
    when the block succeeds. On any failure (Ctrl-C, SIGTERM too) it is deleted and `out`
    keeps what it held. Folders that dead runs left beside `out` are removed first."""
    target = out.resolve()  # a symlinked --out: stage and swap beside the real directory
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = staging_prefix(target)
    sweep_dead_runs(target.parent, prefix, lambda line: log(f"train: {line}"))
    # made as .<out>.train~*, renamed once locked: a .<out>.train-* always has its lock
    with owned_folder(target.parent, prefix) as owned:
        stage = owned / "checkpoint"  # beside owner.lock, which is not the checkpoint's
        stage.mkdir()
        yield stage
        publishable(stage)  # not safetensors' 0600: readable by others
        _publish(stage, target, out)


def staging_prefix(target: Path) -> str:
    """The name of the folders a training of --out `target` is built in, up to their suffix."""
    return f".{target.name}.train-"


def _publish(stage: Path, target: Path, out: Path) -> None:
    """Put `stage` at `target`; an earlier training there is swapped out, then deleted."""
    check_train_out(target)  # nothing else landed there while this run trained
    earlier = out_in_use(target)
    replace_dir(stage, target)
    if earlier:
        log(f"--out {out} holds an earlier training: this one replaces it")
    log(f"wrote checkpoint, {METRICS}, {TEST_SPLIT} and {VALIDATION_SPLIT} to {out}")
