"""A dependency-free progress line with rate and ETA for long loops (data preparation, inference, validation).

    prog = Progress(total=len(loader), desc="inference")
    for batch in loader:
        ...
        prog.update()
    prog.close()

Lines are printed at most every ``interval_s`` seconds (and at the end), e.g.
``inference: 120/2939 (4.1%) 35.20 it/s elapsed 0:00:03 ETA 0:01:20``.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO

__all__ = ["format_duration", "Progress"]


def format_duration(seconds: float) -> str:
    """``3725.2 -> "1:02:05"`` (hours unbounded); ``"?"`` for unknown/negative values."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{(s % 3600) // 60:02d}:{s % 60:02d}"


class Progress:
    """Counts work items; prints ``desc: done/total (pct) rate unit/s elapsed ETA`` every ``interval_s`` seconds."""

    def __init__(self, total: Optional[int] = None, desc: str = "", unit: str = "it", interval_s: float = 10.0,
                 stream: Optional[TextIO] = None, clock: Callable[[], float] = time.monotonic,
                 enabled: bool = True) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.interval_s = interval_s
        self.stream = stream
        self.clock = clock
        self.enabled = enabled
        self.done = 0
        self.start = clock()
        self._last_print: Optional[float] = None

    @property
    def elapsed(self) -> float:
        return self.clock() - self.start

    @property
    def rate(self) -> float:
        el = self.elapsed
        return self.done / el if el > 0 else 0.0

    @property
    def eta(self) -> Optional[float]:
        if self.total is None or self.rate <= 0:
            return None
        return max(0, self.total - self.done) / self.rate

    def line(self) -> str:
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            count = f"{self.done}/{self.total} ({100.0 * self.done / self.total:.1f}%)"
        else:
            count = f"{self.done}"
        eta = self.eta
        tail = f" ETA {format_duration(eta)}" if eta is not None else ""
        return (f"{head}{count} {self.rate:.2f} {self.unit}/s elapsed {format_duration(self.elapsed)}{tail}")

    def update(self, n: int = 1, desc: Optional[str] = None) -> Optional[str]:
        """Advance by ``n``; returns the printed line when one was printed."""
        self.done += n
        if desc is not None:
            self.desc = desc
        now = self.clock()
        finished = self.total is not None and self.done >= self.total
        if finished or self._last_print is None or now - self._last_print >= self.interval_s:
            return self._emit(now)
        return None

    def _emit(self, now: float) -> Optional[str]:
        self._last_print = now
        text = self.line()
        if self.enabled:
            print(text, file=self.stream or sys.stderr, flush=True)
        return text

    def close(self) -> Optional[str]:
        """Print a final line (unless the last update already printed the completed count)."""
        if self._last_print is not None and self.total is not None and self.done >= self.total:
            return None
        return self._emit(self.clock())
