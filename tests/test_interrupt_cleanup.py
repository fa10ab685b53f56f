"""SIGTERM and kill -9 during `train` and `export`: nothing is left behind.

SIGTERM (a scheduler's timeout) cleans up as Ctrl-C does: the run's folders beside --out
and in the temp folder are removed, one line says what --out holds, and it exits 143.
kill -9 cannot be handled, so the next run removes the folders of dead runs (their
`owner.lock` free) and keeps those of live ones. The signals go to real `marketpulse`
processes; a dead run's folder is made by a process that is then killed with SIGKILL.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import train_args

from marketpulse.cli import main
from marketpulse.errors import MarketpulseError
from marketpulse.owned_folders import (
    STAGE_OWNER,
    Terminated,
    owned_folder,
    remove_dead_folders,
    sigterm_cleanup_started,
    sigterm_raises,
    sweep_dead_runs,
)

CLI = "from marketpulse.cli import main; main()"
# `export` pausing once its graphs are built (both of its folders then exist), so a
# signal is sure to land mid-run whatever the speed of the machine
PAUSED_EXPORT = """
import sys, time
from marketpulse.export import stage
built = stage.build_graphs
def paused(*args, **kwargs):
    graphs = built(*args, **kwargs)
    print("export: graphs built, pausing", file=sys.stderr, flush=True)
    time.sleep(300)
    return graphs
stage.build_graphs = paused
from marketpulse.cli import main
main()
"""


@pytest.fixture
def start(tmp_path):
    """Start `python -c CODE ARGS` with stderr to a log file; killed if a test fails."""
    procs: list[subprocess.Popen] = []

    def start(code: str, args: list[str], log: Path, env: dict | None = None):
        with log.open("w") as stderr:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", code, *args],
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    env={**os.environ, **(env or {})},
                )
            )
        return procs[-1]

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_for(log: Path, proc: subprocess.Popen, pattern: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while pattern not in log.read_text():
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} before {pattern!r}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {pattern!r} in {timeout}s:\n{log.read_text()}")
        time.sleep(0.2)


def _ours(temp: Path) -> list[Path]:
    """marketpulse's folders in a temp folder (a library drops a .ses file there too)."""
    return sorted(p for p in temp.iterdir() if p.name.startswith("marketpulse"))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _dead_run_folder(parent: Path, prefix: str, size: int = 2_000_000) -> tuple[Path, int]:
    """A folder `parent/<prefix>*` as a run killed with kill -9 leaves it: an owned folder
    (its owner.lock) made by a child process, which is then SIGKILLed; and its pid."""
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from marketpulse.owned_folders import owned_folder\n"
        "prefix = sys.argv[2]\n"
        "with owned_folder(Path(sys.argv[1]), prefix, prefix[:-1] + '~') as folder:\n"
        "    (folder / 'part.bin').write_bytes(bytes(int(sys.argv[3])))\n"
        "    print(folder, flush=True)\n"
        "    time.sleep(300)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(parent), prefix, str(size)],
        stdout=subprocess.PIPE,
        text=True,
    )
    folder = Path(proc.stdout.readline().strip())
    proc.kill()  # SIGKILL: no finally runs
    proc.wait()
    proc.stdout.close()
    assert folder.is_dir() and (folder / STAGE_OWNER).is_file()
    return folder, proc.pid


def _older_folder(parent: Path, name: str) -> Path:
    """A staging folder as an older marketpulse made it: no owner.lock."""
    folder = parent / name
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(bytes(3000))
    return folder


@pytest.fixture(scope="module")
def earlier_training(market_db, tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("earlier") / "model"
    result = CliRunner().invoke(main, train_args(market_db, out, tiny_checkpoint))
    assert result.exit_code == 0, result.output
    return out


def test_sigterm_during_train_removes_its_folder_and_keeps_the_earlier_training(
    earlier_training, market_db, tiny_checkpoint, tmp_path, start
):
    """SIGTERM mid-training: exit 143, one line saying --out kept what it held, --out
    byte for byte as it was and no .model.train-* beside it (the old code died silently
    and left the staging folder)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    out = runs / "model"
    shutil.copytree(earlier_training, out)
    before = _snapshot(out)
    args = train_args(market_db, out, tiny_checkpoint, small=False)
    args += ["--epochs", "300", "--patience", "300", "--batch-size", "8"]
    log = tmp_path / "train.log"
    proc = start(CLI, args, log)
    _wait_for(log, proc, "validation epoch 1.00")
    staged = [p.name for p in runs.iterdir() if p.name.startswith(".model.train-")]
    assert len(staged) == 1  # the run is staging beside --out
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    last = log.read_text().strip().splitlines()[-1]
    assert last == (
        "marketpulse: interrupted by SIGTERM before the checkpoint was complete: nothing was "
        f"written to --out {out} (it keeps what it held before); this run's temporary folders "
        "were removed"
    )
    assert [p.name for p in runs.iterdir()] == ["model"]
    assert _snapshot(out) == before


def test_sigterm_during_export_removes_both_of_its_folders(tiny_checkpoint, tmp_path, start):
    """SIGTERM while the graphs are built: exit 143, one line saying nothing was written,
    no .bundle.export-* beside --out and no marketpulse-export-* in $TMPDIR."""
    temp, where = tmp_path / "temp", tmp_path / "bundles"
    temp.mkdir()
    where.mkdir()
    out = where / "bundle"
    args = ["export", "--model", str(tiny_checkpoint), "--out", str(out), "--variants", "fp32"]
    log = tmp_path / "export.log"
    proc = start(PAUSED_EXPORT, args, log, env={"TMPDIR": str(temp)})
    _wait_for(log, proc, "graphs built, pausing")
    assert [p.name[:19] for p in _ours(temp)] == ["marketpulse-export-"]
    assert [p.name[:15] for p in where.iterdir()] == [".bundle.export-"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    last = log.read_text().strip().splitlines()[-1]
    assert last == (
        "marketpulse: interrupted by SIGTERM before the bundle was complete: nothing was "
        f"written to --out {out}; this run's temporary folders were removed"
    )
    assert _ours(temp) == [] and list(where.iterdir()) == []


def test_train_removes_a_dead_runs_folder_and_keeps_a_live_ones(
    market_db, tiny_checkpoint, tmp_path
):
    """Beside --out: a killed run's folder is removed (one line: size, pid, path); a live
    run's, and one an older marketpulse left (no lock: nothing tells whether its run is
    alive), are kept, the latter named in a line."""
    runs = tmp_path / "runs"
    runs.mkdir()
    dead, pid = _dead_run_folder(runs, ".model.train-")
    older = _older_folder(runs, ".model.train-older_01")
    with owned_folder(runs, ".model.train-", ".model.train~") as live:
        result = CliRunner().invoke(main, train_args(market_db, runs / "model", tiny_checkpoint))
        assert result.exit_code == 0, result.output
        assert live.is_dir()
    assert not dead.exists() and older.is_dir()
    assert f"train: removed 2 MB left by a dead run (pid {pid}): {dead}\n" in result.output
    assert re.search(
        rf"train: kept 1 folder\(s\) an older marketpulse left, .*: {re.escape(str(older))} "
        r"\(3 kB\)\n",
        result.output,
    )
    assert sorted(p.name for p in runs.iterdir()) == [".model.train-older_01", "model"]


def test_export_removes_dead_runs_folders_beside_out_and_in_tmp(
    tiny_checkpoint, tmp_path, monkeypatch
):
    """A killed export's folders beside --out and in $TMPDIR are removed by the next
    export, each with a line; a live export's are kept."""
    temp, where = tmp_path / "temp", tmp_path / "bundles"
    temp.mkdir()
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    dead_stage, stage_pid = _dead_run_folder(where, ".bundle.export-")
    dead_work, work_pid = _dead_run_folder(temp, "marketpulse-export-")
    with ExitStack() as live:
        live_stage = live.enter_context(owned_folder(where, ".bundle.export-", ".bundle.x~"))
        live_work = live.enter_context(owned_folder(temp, "marketpulse-export-", "mp-x~"))
        args = ["export", "--model", str(tiny_checkpoint), "--out", str(where / "bundle")]
        result = CliRunner().invoke(main, [*args, "--variants", "fp32"])
        assert result.exit_code == 0, result.output
        assert live_stage.is_dir() and live_work.is_dir()
        assert _ours(temp) == [live_work]
        assert sorted(where.iterdir()) == [live_stage, where / "bundle"]
    for folder, pid in ((dead_stage, stage_pid), (dead_work, work_pid)):
        assert f"export: removed 2 MB left by a dead run (pid {pid}): {folder}\n" in result.output
    assert "older marketpulse" not in result.output


def test_the_sweep_takes_out_names_literally(tmp_path):
    """--out `m[1]`: its dead folders are found (a glob would read [1] as a character
    class and miss them), and those of --out `m1` are not its to remove."""
    ours, _ = _dead_run_folder(tmp_path, ".m[1].train-", size=10)
    other = _older_folder(tmp_path, ".m1.train-xxxxxxxx")
    assert remove_dead_folders(tmp_path, ".m[1].train-") == (1, 0)
    assert not ours.exists() and other.is_dir()


def test_sigterm_raises_only_inside_the_block():
    """SIGTERM raises Terminated (a KeyboardInterrupt, so every `finally` runs) inside the
    block; the handler before it is put back after."""
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as caught, sigterm_raises():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises at once
    assert isinstance(caught.value, KeyboardInterrupt) and caught.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_sweep_takes_only_its_own_exact_names(tmp_path):
    """--out `model`'s prefix `.model.train-` starts the names of --out `model.train-b`'s
    folders too: its dead folder and one still being made (no lock yet) are not this
    sweep's (the old glob `.model.train-*` removed the one and named the other as left by
    an older marketpulse); only `.model.train-` + mkdtemp's 8 characters are."""
    ours, pid = _dead_run_folder(tmp_path, ".model.train-", size=10)
    theirs, _ = _dead_run_folder(tmp_path, ".model.train-b.train-", size=10)
    making = Path(tempfile.mkdtemp(prefix=".model.train-b.train~", dir=tmp_path))
    lines: list[str] = []
    sweep_dead_runs(tmp_path, ".model.train-", lines.append)
    assert lines == [f"removed 0 kB left by a dead run (pid {pid}): {ours}"]
    assert sorted(tmp_path.iterdir()) == sorted([theirs, making])


def test_each_callers_sweep_matches_the_folders_it_makes(tmp_path):
    """Score's, the Ray engine's (a run id in its names), trends', train's, adapt's and
    export's folders, as `owned_folder` names them, are the ones their sweeps take."""
    import uuid

    from marketpulse.export.stage import WORK_PREFIX
    from marketpulse.export.stage import staging_prefix as export_prefix
    from marketpulse.runtime.database import STAGE_PREFIX
    from marketpulse.runtime.ray_engine import RAY_RUN_ID, RAY_STAGE_PREFIX
    from marketpulse.train.out_dir import staging_prefix as train_prefix
    from marketpulse.trends.stage import SCRATCH_PREFIX

    out = tmp_path / "model"
    run_id = uuid.uuid4().hex[:12]  # runs.py's
    for made, swept, between in (
        (STAGE_PREFIX, STAGE_PREFIX, ""),
        (f"{RAY_STAGE_PREFIX}{run_id}-", RAY_STAGE_PREFIX, RAY_RUN_ID),
        (SCRATCH_PREFIX, SCRATCH_PREFIX, ""),
        (train_prefix(out), train_prefix(out), ""),
        (".model.adapt-", ".model.adapt-", ""),  # adapt.py's, inline
        (export_prefix(out), export_prefix(out), ""),
        (WORK_PREFIX, WORK_PREFIX, ""),
    ):
        folder, _ = _dead_run_folder(tmp_path, made, size=10)
        assert remove_dead_folders(tmp_path, swept, between=between) == (1, 0), made
        assert not folder.exists()


def test_a_lock_another_process_holds_stops_the_run(tmp_path, monkeypatch):
    """The new folder's owner.lock locked by another process: the run stops with one line
    (it went on unlocked, and a sweep could remove its folder under it) and removes it."""
    making = tmp_path / ".x~abcdefgh"
    making.mkdir()
    (making / STAGE_OWNER).touch()
    code = (
        "import fcntl, sys, time\n"
        "held = open(sys.argv[1])\n"
        "fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "print('locked', flush=True)\n"
        "time.sleep(300)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(making / STAGE_OWNER)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        monkeypatch.setattr(tempfile, "mkdtemp", lambda prefix, dir: str(making))
        with pytest.raises(MarketpulseError) as err, owned_folder(tmp_path, ".x-", ".x~"):
            pytest.fail("the block ran without its lock")
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert f"cannot lock {making / STAGE_OWNER}" in str(err.value)
    assert "another process holds it" in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_a_filesystem_without_locks_runs_unlocked(tmp_path, monkeypatch):
    """flock failing with ENOLCK (no locks on that filesystem): the folder is made all the
    same; the sweep cannot lock it either, so it takes it for a live run's."""
    import errno
    import fcntl

    def no_locks(*args):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with owned_folder(tmp_path, ".x-", ".x~") as folder:
        assert (folder / STAGE_OWNER).is_file()
        assert remove_dead_folders(tmp_path, ".x-") == (0, 0) and folder.is_dir()
    assert list(tmp_path.iterdir()) == []


# An owned folder of 20 parts, removed by its run with the removal of the last part
# paused (once) for argv[4] s, so that a signal lands mid-removal: the run leaves the
# block (argv[3] `exit`), raises in it (`error`), waits in it for a SIGTERM (`wait`), or
# swaps its staged output into --out `out` whose parts are then removed (`replace`).
SLOW_REMOVAL = """
import os, sys, time
from pathlib import Path
from marketpulse.owned_folders import owned_folder, stop_on_sigterm
from marketpulse.staging import replace_dir

parent, prefix, mode, pause = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
real_unlink, paused = os.unlink, False

def unlink(path, *args, **kwargs):
    global paused
    name = os.path.basename(os.fsdecode(path))
    if not paused and name.startswith("part-") and len(list(parent.rglob("part-*"))) == 1:
        paused = True
        print("removing the last part", flush=True)
        time.sleep(pause)
    real_unlink(path, *args, **kwargs)

os.unlink = unlink
out = parent / "out"
with stop_on_sigterm(out, "bundle"), owned_folder(parent, prefix, prefix[:-1] + "~") as owned:
    if mode == "replace":
        (owned / "bundle").mkdir()
        (owned / "bundle" / "new.bin").write_bytes(b"new")
        replace_dir(owned / "bundle", out)
    else:
        for i in range(20):
            (owned / f"part-{i:02}.bin").write_bytes(bytes(1000))
    print(owned, flush=True)
    if mode == "error":
        raise RuntimeError("failed")
    if mode == "wait":
        time.sleep(300)
"""


@pytest.fixture
def slow_removal(tmp_path):
    """Start SLOW_REMOVAL in `tmp_path/runs`; (process, its folder, its stderr log)."""
    procs: list[subprocess.Popen] = []

    def start(mode: str, pause: float = 300) -> tuple[subprocess.Popen, Path, Path]:
        runs, log = tmp_path / "runs", tmp_path / f"{mode}.log"
        runs.mkdir(exist_ok=True)
        with log.open("w") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-c", SLOW_REMOVAL, str(runs), ".out.x-", mode, str(pause)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        procs.append(proc)
        folder = Path(proc.stdout.readline().strip())
        assert folder.name.startswith(".out.x-"), log.read_text()
        return proc, folder, log

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


def test_a_removal_cut_short_by_kill_9_is_finished_by_the_next_sweep(slow_removal, tmp_path):
    """kill -9 while a run removes its folder: the lock file goes last, so what is left
    still has it and the next sweep removes it (rmtree could take owner.lock first,
    leaving a folder every later run kept as an older marketpulse's)."""
    proc, folder, _ = slow_removal("exit")
    assert proc.stdout.readline() == "removing the last part\n"
    assert (folder / STAGE_OWNER).is_file()
    proc.kill()
    proc.wait()
    assert remove_dead_folders(tmp_path / "runs", ".out.x-") == (1, 0)
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_second_sigterm_does_not_cut_the_cleanup_short(slow_removal, tmp_path):
    """A scheduler's second SIGTERM while the first one's cleanup runs is ignored: the
    folder is removed, and the line saying so is true (it raised mid-removal, left the
    folder, and the line still said it was removed)."""
    proc, folder, log = slow_removal("wait", pause=3)
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline() == "removing the last part\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    last = log.read_text().strip().splitlines()[-1]
    assert last == (
        "marketpulse: interrupted by SIGTERM before the bundle was complete: nothing was "
        f"written to --out {tmp_path / 'runs' / 'out'}; this run's temporary folders were removed"
    )
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_sigterm_during_an_errors_cleanup_finishes_it(slow_removal, tmp_path):
    """SIGTERM while a failed run removes its folder: the removal it cut short is finished
    before the line says the folders were removed."""
    proc, folder, log = slow_removal("error")
    assert proc.stdout.readline() == "removing the last part\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert (
        log.read_text()
        .strip()
        .splitlines()[-1]
        .endswith("; this run's temporary folders were removed")
    )
    assert list((tmp_path / "runs").iterdir()) == []


def test_what_out_held_goes_with_the_owned_folder_even_after_kill_9(slow_removal, tmp_path):
    """replace_dir swaps --out's earlier content into the run's owned folder: kill -9
    while it is removed leaves it there, for the next sweep (it was renamed to a
    `.out.old-*` folder beside --out, which nothing removed)."""
    runs = tmp_path / "runs"
    (runs / "out").mkdir(parents=True)
    for i in range(5):
        (runs / "out" / f"part-{i}.bin").write_bytes(b"earlier")
    proc, folder, _ = slow_removal("replace")
    assert proc.stdout.readline() == "removing the last part\n"
    proc.kill()
    proc.wait()
    assert sorted(runs.iterdir()) == [folder, runs / "out"]
    assert [p.name for p in (runs / "out").iterdir()] == ["new.bin"]
    assert remove_dead_folders(runs, ".out.x-") == (1, 0)
    assert [p.name for p in runs.iterdir()] == ["out"]


def test_sigterm_raises_ignores_further_sigterms_once_the_cleanup_started():
    """After the first SIGTERM raised Terminated, the cleanup it runs (once it says so:
    `sigterm_cleanup_started`) is not interrupted by another; the handler before is put
    back at the end, and the next block raises again."""
    before = signal.getsignal(signal.SIGTERM)
    reached = False
    with pytest.raises(Terminated) as caught, sigterm_raises():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises at once
        finally:
            sigterm_cleanup_started()
            os.kill(os.getpid(), signal.SIGTERM)  # ignored: this cleanup goes on
            time.sleep(0.1)
            reached = True
    # the cleanup ran to its end, and the Terminated is the first one, not a second
    assert reached and caught.value.__context__ is None
    assert signal.getsignal(signal.SIGTERM) is before
    with pytest.raises(Terminated), sigterm_raises():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)


def test_a_swallowed_terminated_leaves_sigterm_raising(monkeypatch):
    """A Terminated raised while a `__del__` runs is swallowed by Python ("Exception
    ignored in ...") and starts no cleanup: the next SIGTERM still raises (the handler
    once set SIG_IGN on the first one, and every later SIGTERM went ignored: a
    scheduler had to kill -9)."""
    swallowed: list[BaseException] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: swallowed.append(u.exc_value))

    class SignalledWhileCollected:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here, inside __del__

    with pytest.raises(Terminated), sigterm_raises():
        obj = SignalledWhileCollected()
        del obj  # __del__ runs now; its Terminated goes to sys.unraisablehook
        assert [type(exc) for exc in swallowed] == [Terminated]
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # raises at once
