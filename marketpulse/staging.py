"""Output folders built beside their destination and renamed into place, readable like any.

`train`, `adapt` and `export` write their output into a hidden sibling of `--out` and
rename it into place only when everything succeeded, so a failure never leaves a
half-written output or destroys the previous one. `tempfile.mkdtemp` creates that
sibling private (0700), and some writers (safetensors) create their files 0600: once
renamed, a scoring service running as another user could not read the bundle. So
`publishable` gives the folder and its files the modes a plain `mkdir` and `open` would
have had under the process's umask; `replace_dir` swaps the finished folder into place,
moving what --out held into the run's owned folder, which removes it (owned_folders.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from marketpulse.owned_folders import STAGE_OWNER

# the name the folder swapped out of --out takes in the owned folder, beside the staging one
SWAPPED_OUT = "swapped-out"


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set straight back
    os.umask(mask)
    return mask


def publishable(folder: Path) -> Path:
    """Give `folder`, its subfolders and files the modes the umask would give new ones."""
    mask = _umask()
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
    return Path(folder)


def replace_dir(staging: Path, out: Path) -> None:
    """Put `staging` at `out`. `staging` is built in an `owned_folder` (owned_folders.py):
    an existing folder at `out` is swapped out into that owned folder, beside `staging`
    (put back if the swap fails), and goes with it, lock file last, when the run's block
    ends; a run killed meanwhile leaves it in a folder the next run's sweep removes, never
    in a `.OUT.old-*` folder nothing removes."""
    owned = staging.parent
    if not (owned / STAGE_OWNER).is_file():
        raise ValueError(f"{staging} is not in an owned folder (no {STAGE_OWNER} beside it)")
    if not out.exists():
        staging.rename(out)
        return
    old = owned / SWAPPED_OUT
    out.rename(old)
    try:
        staging.rename(out)
    except BaseException:
        old.rename(out)
        raise
