"""Progress for every long step: a tqdm bar on a terminal, periodic plain lines elsewhere.

A carriage-return progress bar written to a file (CI logs, SLURM's slurm-*.out, nohup.out) is
noise: thousands of redrawn bars on one line. When stderr is not a terminal, :func:`progress_bar`
returns a :class:`PlainProgress` instead, which prints one ordinary line every
``SELFSUP_PROGRESS_SECONDS`` seconds (default 30) and one when it finishes::

    train: 1200/7800 step (15%) | loss=4.2731, lr=0.6, img_s=2113 | 9m58s elapsed, 2.01 step/s, ETA 54m43s

Both share the subset of tqdm's interface the package uses: iteration, ``update``,
``set_postfix``, ``close`` and the context manager.
"""
from __future__ import annotations

import os
import sys
import time
from typing import IO, Any, Iterable, Iterator

from tqdm.auto import tqdm

DEFAULT_INTERVAL_S = 30.0


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, disable: bool = False, leave: bool = True, delay: float = 0.0,
                 file: IO[str] | None = None) -> Any:
    """A tqdm bar when ``file`` (default stderr) is a terminal, else a :class:`PlainProgress`."""
    stream = file if file is not None else sys.stderr
    if disable or _isatty(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, leave=leave,
                    delay=delay, dynamic_ncols=True, file=file)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, delay=delay,
                         file=stream)


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real file
        return False


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class PlainProgress:
    """Progress as one plain line every ``interval`` seconds, and a last line at ``close``.

    Args:
        iterable: iterate over it (counting one per item), or ``None`` and call ``update``.
        total: expected count (default ``len(iterable)`` when it has one).
        desc, unit: the line's label and unit.
        initial: the count to start from (a resumed run).
        leave: print a final line at ``close`` (when it ran at least ``delay`` seconds or printed before).
        interval: seconds between lines (default ``$SELFSUP_PROGRESS_SECONDS`` or 30).
        file: where to print (default stderr).
    """

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, leave: bool = True, delay: float = 0.0,
                 interval: float | None = None, file: IO[str] | None = None):
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n = self.start_n = initial
        self.desc, self.unit, self.leave, self.delay = desc, unit, leave, delay
        env = os.environ.get("SELFSUP_PROGRESS_SECONDS")
        self.interval = interval if interval is not None else float(env) if env else DEFAULT_INTERVAL_S
        self.file = file if file is not None else sys.stderr
        self.postfix = ""
        self.start = self.last = time.monotonic()
        self.printed = self.closed = False
        self.printed_n = None  # the count the last line showed

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable or ():
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self._print(now)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in {**(ordered_dict or {}), **kwargs}.items())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        now = time.monotonic()
        if self.leave and self.printed_n != self.n and (self.printed or now - self.start >= self.delay):
            self._print(now)

    def line(self, now: float | None = None) -> str:
        """The progress line as it would be printed now."""
        elapsed = (time.monotonic() if now is None else now) - self.start
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        count = f"{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)" if self.total else \
            f"{self.n} {self.unit}"
        timing = f"{_hms(elapsed)} elapsed, {rate:.3g} {self.unit}/s"
        if self.total and rate > 0 and self.n < self.total:
            timing += f", ETA {_hms((self.total - self.n) / rate)}"
        return " | ".join(part for part in (f"{self.desc}: {count}", self.postfix, timing) if part)

    def _print(self, now: float) -> None:
        print(self.line(now), file=self.file, flush=True)
        self.last, self.printed, self.printed_n = now, True, self.n
