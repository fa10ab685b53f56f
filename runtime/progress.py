"""Progress on stderr: rows done, rows/s and ETA, without flooding logs.

On a terminal the line redraws in place twice a second; in a log file (a nightly
job) a full line is written every `log_every` seconds.
"""

from __future__ import annotations

import sys
import time


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Progress:
    def __init__(self, total: int, enabled: bool = True, stream=None, log_every: float = 10.0):
        self.total = total
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = min(0.5, log_every) if self.tty else log_every
        self.start = time.perf_counter()
        self.last = self.start
        self.done = 0

    def log(self, message: str) -> None:
        if self.enabled:
            print(f"marketpulse: {message}", file=self.stream, flush=True)

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def update(self, rows: int) -> None:
        self.done += rows
        now = time.perf_counter()
        if not self.enabled or now - self.last < self.every:
            return
        self.last = now
        self._draw()

    def _draw(self) -> None:
        rate = self.rate()
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = format_duration((self.total - self.done) / rate) if rate > 0 else "?"
        line = f"scoring: {self.done:,}/{self.total:,} rows{pct}  {rate:,.0f} rows/s  ETA {eta}"
        if self.tty:
            print("\r" + line.ljust(72), end="", file=self.stream, flush=True)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            self._draw()
            print(file=self.stream, flush=True)
