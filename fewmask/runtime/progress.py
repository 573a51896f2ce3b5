"""A dependency-free progress line on stderr (redrawn in place on a terminal, sparse in logs)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TextIO

_PREFIX: ContextVar[str] = ContextVar("fewmask_progress_prefix", default="")


@contextlib.contextmanager
def labelled(prefix: str) -> Iterator[None]:
    """Progress lines drawn inside start with ``prefix`` (an experiment names its variant)."""
    token = _PREFIX.set(prefix)
    try:
        yield
    finally:
        _PREFIX.reset(token)


class Progress:
    """``with Progress(total, "train") as bar: bar.update(n, "loss 0.3")``."""

    def __init__(
        self,
        total: int,
        label: str,
        start: int = 0,
        enabled: bool = True,
        stream: TextIO | None = None,
    ):
        prefix = _PREFIX.get()
        label = f"{prefix} {label}" if prefix else label
        self.total, self.label, self.count, self.enabled = total, label, start, enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._t0 = time.monotonic()
        self._start = start
        self._last = 0.0

    def update(self, count: int, note: str = "") -> None:
        self.count = count
        if not self.enabled:
            return
        now = time.monotonic()
        if count < self.total and now - self._last < (0.2 if self.tty else 30.0):
            return
        self._last = now
        rate = (count - self._start) / max(now - self._t0, 1e-9)
        eta = (self.total - count) / rate if rate > 0 else 0.0
        width = 24
        filled = int(width * count / max(self.total, 1))
        line = (
            f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {count}/{self.total} "
            f"{rate:.1f}/s eta {eta:.0f}s {note}"
        )
        self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        self.stream.flush()

    def write(self, line: str) -> None:
        """``line`` on a line of its own (the bar is redrawn by the next update)."""
        if self.enabled:
            self.stream.write(("\r" + line + "\033[K\n") if self.tty else line + "\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
