"""Where a training is built and how it replaces --out: whole, or not at all.

`check_train_out` refuses an --out that holds anything but an earlier training's output,
before any row is read. `staged_out` yields a new directory beside --out to write the
checkpoint in (trainer.py and tune.py write everything there); it replaces --out only
once the block succeeds, so a failed or interrupted run leaves an earlier training in
--out as it was, never mixed with this run's files. What the directory holds is
`marketpulse.checkpoint`'s to define; this module only stages and swaps it.
"""

from __future__ import annotations

import shutil
import tempfile
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
    when the block succeeds. On any failure (Ctrl-C too) it is deleted and `out` keeps
    what it held."""
    target = out.resolve()  # a symlinked --out: stage and swap beside the real directory
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.train-", dir=target.parent))
    try:
        yield stage
        publishable(stage)  # not mkdtemp's 0700 nor safetensors' 0600: readable by others
        _publish(stage, target, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _publish(stage: Path, target: Path, out: Path) -> None:
    """Put `stage` at `target`; an earlier training there is swapped out, then deleted."""
    check_train_out(target)  # nothing else landed there while this run trained
    earlier = out_in_use(target)
    replace_dir(stage, target)
    if earlier:
        log(f"--out {out} holds an earlier training: this one replaces it")
    log(f"wrote checkpoint, {METRICS}, {TEST_SPLIT} and {VALIDATION_SPLIT} to {out}")
