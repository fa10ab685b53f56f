"""The Ray engine's dealings with the cluster: joining it, checking what its nodes can
read, and a progress watchdog so a run that stops making progress fails instead of
hanging.

`connect(ray, address, log)` joins (or starts) the cluster and sets Ray Data up for a
scoring run; `plan_workers` sizes the actor pool from a resources dict.
`check_nodes_read(ray, paths, gpus, timeout_s, log)` runs a zero-CPU probe on every node
that can host a scorer, fails with one line naming a node that cannot read the stage
dir or the bundle, skips (and logs) a node that died but is still listed, and returns
the resources of the nodes that answered: the pool is sized on those. `watched(batches, timeout_s, stopping)` yields the scored
batches of a Ray Data iterator, and raises `Stalled` when none arrives for
`timeout_s` seconds. None of this knows about DuckDB or the model.

Ray is imported by the caller (`ray_engine.require_ray`); nothing here imports it at
module level.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from marketpulse.errors import MarketpulseError, first_line

# Seconds without a scored batch coming back (start-up included) before a run fails,
# and the most the node check may take. A chunk of 4,096 rows on one contended CPU
# thread of a MiniLM model takes a few minutes; ten is well past that and still ends
# a stuck nightly job.
DEFAULT_TIMEOUT_S = 600.0


class Stalled(MarketpulseError):
    """No scored batch came back from the cluster within the watchdog's bound."""


# How long `check_reachable` waits for a cluster's port (at most --ray-timeout).
CONNECT_TIMEOUT_S = 30.0


def check_reachable(address: str | None, timeout_s: float) -> None:
    """Refuse a `host:port` (or `ray://host:port`) nobody answers at within `timeout_s`:
    Ray itself retries such an address for minutes, past --ray-timeout."""
    found = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)", address or "")
    if found is None:  # "auto", a new local cluster, or a form Ray resolves itself
        return
    host, port = found.group(1), int(found.group(2))
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise MarketpulseError(
            f"cannot connect to Ray at {address}: nothing answered at {host}:{port} within "
            f"{timeout_s:g}s ({exc.strerror or exc}); check the address, or start the head "
            "with `ray start --head`"
        ) from exc


def connect(ray, address: str | None, log) -> bool:
    """Join the cluster at `address`, or start a local one; True when this call started Ray.

    No address means a new local cluster, never one that `ray start` left running
    on this machine (Ray's own default would join that one).
    """
    import ray.data

    # Ray Data logs every execution plan and its settings; marketpulse reports progress
    # itself, and a worker's error comes back as the run's one-line error.
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # progress is reported by marketpulse, once
    ctx.print_on_execution_start = False
    if ray.is_initialized():
        return False
    # ray.init puts its own SIGTERM handler (exit at once) in place of the run's, which
    # commits the chunk in hand and marks the run interrupted: keep the run's
    on_main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if on_main else None
    try:
        ray.init(
            address=address or "local",
            include_dashboard=False,
            log_to_driver=False,
            logging_level="warning",
        )
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = first_line(exc)
        raise MarketpulseError(
            f"cannot connect to Ray at {address or 'a new local cluster'} ({first[:200]}); "
            "start one with `ray start --head` and run on one of its nodes with "
            "--ray-address auto"
        ) from exc
    log(f"Ray cluster: {ray.cluster_resources()}")
    return True


def fingerprint(path: Path) -> str:
    """What a node must see at `path`: the sorted names in a directory, or a file's hash."""
    if path.is_dir():
        names = "\n".join(sorted(p.name for p in path.iterdir()))
        return "dir:" + hashlib.sha256(names.encode()).hexdigest()
    return "file:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _probe(paths: dict[str, tuple[str, str]]) -> tuple[str, list[str]]:
    """On one node: (which node, the flags whose path it cannot read as the driver does)."""
    import ray

    wrong = []
    for flag, (path, expected) in paths.items():
        try:
            seen = fingerprint(Path(path))
        except OSError:
            seen = None
        if seen != expected:
            wrong.append(flag)
    node = f"{ray.util.get_node_ip_address()} (node {ray.get_runtime_context().get_node_id()[:8]})"
    return node, wrong


def scoring_nodes(ray, gpus: float) -> list[dict]:
    """The alive nodes a scorer actor or a read task can be placed on."""
    need = "GPU" if gpus > 0 else "CPU"
    return [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(need, 0) > 0]


def check_nodes_read(
    ray, paths: dict[str, Path], gpus: float = 0, timeout_s: float = DEFAULT_TIMEOUT_S, log=None
) -> dict[str, float]:
    """Fail with one line unless every scoring node sees `paths` as the driver does.

    `paths` maps a flag (`--stage-dir`) to a path; each node must find the same file
    names in a directory, or the same bytes in a file, so a node's own empty /tmp or a
    stale copy of the bundle is caught before any actor starts. A node that died but is
    still listed (its heartbeat has not yet timed out) is skipped and logged. Returns the
    summed resources of the nodes that answered, to size the actor pool on.
    """
    from ray.exceptions import NodeDiedError, TaskUnschedulableError, WorkerCrashedError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    expected = {flag: (str(path), fingerprint(path)) for flag, path in paths.items()}
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    nodes = scoring_nodes(ray, gpus)
    refs = [
        probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(expected)
        for node in nodes
    ]
    ready, waiting = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    if waiting:
        raise MarketpulseError(
            f"{len(waiting)} of {len(refs)} Ray node(s) did not answer a file check within "
            f"{timeout_s:g}s (--ray-timeout); check `ray status` (nodes alive, workers able "
            "to start)"
        )
    live: dict[str, float] = {}
    for node, ref in zip(nodes, refs, strict=True):
        try:
            where, wrong = ray.get(ref)
        # listed alive but gone by the time the probe ran, or died while it ran
        except (TaskUnschedulableError, NodeDiedError, WorkerCrashedError):
            if log:
                log(f"Ray node {node['NodeID'][:8]} left the cluster; not scoring on it")
            continue
        for flag in wrong:
            path = expected[flag][0]
            raise MarketpulseError(
                f"the Ray node {where} cannot read {flag} {path} as this machine does (missing "
                "or different); put it on a filesystem every node mounts at the same path"
            )
        for name, amount in node.get("Resources", {}).items():
            live[name] = live.get(name, 0) + amount
    need = f"a GPU (--gpus-per-worker {gpus:g})" if gpus > 0 else "a CPU"
    if not live:
        raise MarketpulseError(f"no live Ray node with {need} to score on; check `ray status`")
    if gpus > 0 and live.get("CPU", 0) < 1:
        # a GPU scorer actor also takes one CPU (ray_engine's actor options)
        raise MarketpulseError(
            "the live GPU node(s) of the Ray cluster have no CPU for a scorer actor; start "
            "them with --num-cpus 1 or more, or pass --gpus-per-worker 0 to score on CPUs"
        )
    return live


def plan_workers(resources: dict, workers: int | None, gpus_per_worker: float, threads: int) -> int:
    """How many Scorer actors to start on `resources` (summed per resource: the cluster's,
    or the live nodes' that `check_nodes_read` returns)."""
    if workers is not None and workers < 1:
        raise MarketpulseError(f"--workers must be at least 1, got {workers}")
    if gpus_per_worker > 0:
        gpus = float(resources.get("GPU", 0))
        if gpus < gpus_per_worker:
            raise MarketpulseError(
                f"the Ray cluster has {gpus:g} GPU(s), --gpus-per-worker {gpus_per_worker:g} "
                "needs more; add GPU nodes or pass --gpus-per-worker 0 to score on CPUs"
            )
        return workers or max(1, int(gpus // gpus_per_worker))
    cpus = int(resources.get("CPU", 0))
    # One CPU stays free for Ray Data's read tasks: actors holding every CPU would wait
    # forever for input that no task can be scheduled to read.
    most = (cpus - 1) // threads
    if most < 1:
        raise MarketpulseError(
            f"the Ray cluster has {cpus} CPU(s): too few for a {threads}-thread scorer plus "
            "one CPU to read the input; pass --threads 1 or add nodes"
        )
    if workers is None:
        return most
    if workers > most:
        raise MarketpulseError(
            f"--workers {workers} x {threads} thread(s) would take all {cpus} CPUs of the Ray "
            f"cluster and leave none to read the input; pass --workers {most} or fewer"
        )
    return workers


_END = object()


def limit_stalls(ray, timeout_s: float) -> None:
    """Have Ray Data itself fail an execution that makes no progress for `timeout_s`.

    Ray Data (2.5x and later) then shuts its operators and actors down; `watched`
    turns its error into the run's one line, and stays the backstop for Ray versions
    without the setting and for waits outside the execution.
    """
    ctx = ray.data.DataContext.get_current()
    if hasattr(ctx, "execution_no_progress_timeout_s"):
        ctx.execution_no_progress_timeout_s = timeout_s


def _stalled(waited: float, timeout_s: float, detail: str) -> Stalled:
    return Stalled(
        f"no scored batch came back from the Ray cluster in {waited:.0f}s "
        f"(--ray-timeout {timeout_s:g}){'; ' + detail if detail else ''}; "
        "check `ray status` for free CPUs and dead nodes, or raise "
        "--ray-timeout if one chunk takes longer on these workers"
    )


def watched(
    batches: Callable[[], Iterable],
    timeout_s: float,
    stopping: threading.Event,
    describe: Callable[[], str] = lambda: "",
    grace_s: float = 0.0,
) -> Iterator:
    """Yield what `batches()` yields; raise `Stalled` after `timeout_s` with nothing new.

    Ray Data's iterator blocks in Ray while it waits (for actors that cannot start, a
    cluster without free CPUs, a lost node), so it runs on a daemon thread that hands
    each batch over through a small queue; this thread waits with a deadline and
    checks `stopping` (SIGTERM/SIGINT) meanwhile. Ray Data's own no-progress error
    (`limit_stalls`) becomes the same `Stalled`; `grace_s` lets it come first, since
    Ray then cleans up after itself. When the caller stops early, the feeding thread
    closes the iterator at its next batch (Ray Data then tears down its actors); one
    still blocked inside Ray ends when Ray is shut down.
    """
    handoff: queue.Queue = queue.Queue(maxsize=2)
    abandoned = threading.Event()

    def hand(item) -> bool:
        while not abandoned.is_set():
            try:
                handoff.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def feed():
        it = iter(batches())
        try:
            for batch in it:
                if not hand(batch):
                    return
            hand(_END)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            hand(exc)
        finally:
            close = getattr(it, "close", None)
            if close is not None and abandoned.is_set():
                close()

    feeder = threading.Thread(target=feed, name="marketpulse-ray-results", daemon=True)
    feeder.start()
    last = time.monotonic()
    try:
        while True:
            if stopping.is_set():
                return
            try:
                item = handoff.get(timeout=min(1.0, timeout_s))
            except queue.Empty:
                waited = time.monotonic() - last
                if waited >= timeout_s + grace_s:
                    raise _stalled(waited, timeout_s, describe()) from None
                continue
            if item is _END:
                return
            if type(item).__name__ == "ExecutionTimeoutError":  # Ray Data's own watchdog
                raise _stalled(time.monotonic() - last, timeout_s, describe()) from item
            if isinstance(item, BaseException):
                raise item
            yield item
            last = time.monotonic()
    finally:
        abandoned.set()


def stall_detail(ray, done: int, total: int) -> str:
    """A few facts for the watchdog's message: rows done and what the cluster has free."""
    try:
        free = ray.available_resources()
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
    except Exception:  # noqa: BLE001 - the message must not fail because Ray did
        return f"{done:,} of {total:,} rows done"
    return f"{done:,} of {total:,} rows done, {nodes} node(s) alive, {free.get('CPU', 0):g} CPU(s) free"
