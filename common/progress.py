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
from typing import Any, Callable, Optional, TextIO

__all__ = ["format_duration", "print_quietly", "Progress", "quietly"]


def format_duration(seconds: float) -> str:
    """``3725.2 -> "1:02:05"`` (hours unbounded); ``"?"`` for unknown/negative values."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{(s % 3600) // 60:02d}:{s % 60:02d}"


def quietly(write: Callable[..., Any]) -> Callable[..., None]:
    """``write`` (``print`` or a print-like function) made to give up on an unwritable console instead of raising:
    a Ctrl-C also kills the reader of ``train.py ... | tee log``, and the save that the Ctrl-C asked for must not
    die of the closed pipe. (Also a print re-entered from a signal handler, or a closed stream.)"""
    def call(*args, **kwargs) -> None:
        try:
            write(*args, **kwargs)
        except (OSError, ValueError, RuntimeError):
            pass

    return call


def print_quietly(*args, file: Optional[TextIO] = None, **kwargs) -> None:
    """``print`` to ``file`` (default stdout, resolved at call time) that never raises (see :func:`quietly`)."""
    quietly(print)(*args, file=file or sys.stdout, **kwargs)


class Progress:
    """Counts work; prints ``desc: done/total (pct) rate unit/s elapsed ETA`` every ``interval_s`` seconds, as whole
    lines (readable in a log file as well as a terminal).

    Args:
        total: the amount of work (None: unknown, no percentage or ETA).
        desc: the line's prefix (``update(desc=...)`` changes it).
        unit: what is counted, after ``scale`` (e.g. ``"MB"`` with ``scale=1e6`` when counting bytes).
        interval_s: the least time between two lines; the first update and the completion always print.
        scale: counts are shown divided by this (with one decimal when it is not 1).
        initial: work already done before this run (a resumed download): shown in the count, excluded from the rate.
        stream: where lines go (default ``sys.stderr``); ``enabled=False`` prints nothing.
    """

    def __init__(self, total: Optional[float] = None, desc: str = "", unit: str = "it", interval_s: float = 10.0,
                 stream: Optional[TextIO] = None, clock: Callable[[], float] = time.monotonic,
                 enabled: bool = True, scale: float = 1.0, initial: float = 0) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.interval_s = interval_s
        self.stream = stream
        self.clock = clock
        self.enabled = enabled
        self.scale = scale
        self.initial = initial
        self.done = initial
        self.start = clock()
        self._last_print: Optional[float] = None
        self._printed_done: Optional[float] = None

    @property
    def elapsed(self) -> float:
        return self.clock() - self.start

    @property
    def rate(self) -> float:
        """Work per second in this run (``initial`` excluded), in counted units (before ``scale``)."""
        el = self.elapsed
        return (self.done - self.initial) / el if el > 0 else 0.0

    @property
    def eta(self) -> Optional[float]:
        if self.total is None or self.rate <= 0:
            return None
        return max(0, self.total - self.done) / self.rate

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total

    def _amount(self, value: float) -> str:
        if self.scale != 1:
            return f"{value / self.scale:.1f}"
        if value == int(value):  # whole counts in full: "2975680", not "2.97568e+06"
            return str(int(value))
        return f"{value:g}" if abs(value) < 1e6 else f"{value:.0f}"

    def line(self) -> str:
        head = f"{self.desc}: " if self.desc else ""
        unit = f" {self.unit}" if self.scale != 1 else ""  # "6.0/10.0 MB", but "10/100" items
        if self.total:
            count = (f"{self._amount(self.done)}/{self._amount(self.total)}{unit} "
                     f"({100.0 * self.done / self.total:.1f}%)")
        else:
            count = self._amount(self.done) + unit
        eta = self.eta
        tail = f" ETA {format_duration(eta)}" if eta is not None else ""
        return (f"{head}{count} {self.rate / self.scale:.2f} {self.unit}/s elapsed "
                f"{format_duration(self.elapsed)}{tail}")

    def update(self, n: float = 1, desc: Optional[str] = None) -> Optional[str]:
        """Advance by ``n``; returns the printed line when one was printed (the completed count prints once)."""
        return self.update_to(self.done + n, desc)

    def update_to(self, done: float, desc: Optional[str] = None) -> Optional[str]:
        """Set the amount done (a byte offset, seconds of audio...); returns the printed line, if any."""
        self.done = done
        if desc is not None:
            self.desc = desc
        now = self.clock()
        if self.finished:
            return None if self._printed_done == self.done else self._emit(now)
        if self._last_print is None or now - self._last_print >= self.interval_s:
            return self._emit(now)
        return None

    def _emit(self, now: float) -> Optional[str]:
        self._last_print = now
        self._printed_done = self.done
        text = self.line()
        if self.enabled:
            print_quietly(text, file=self.stream or sys.stderr, flush=True)
        return text

    def close(self) -> Optional[str]:
        """Print a final line unless the last line printed already showed the final count."""
        if self._printed_done == self.done:
            return None
        return self._emit(self.clock())
