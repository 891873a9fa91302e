"""Progress on stderr: a bar redrawn in place on a terminal, a line every 10% otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    def __init__(self, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self._stream = stream
        self._width = width
        self._tty = stream.isatty()
        self._last_step: dict[str, int] = {}
        self._last_draw = 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        fraction = 1.0 if total <= 0 else min(1.0, done / total)
        if self._tty:
            now = time.monotonic()
            if done < total and now - self._last_draw < 0.1:
                return
            self._last_draw = now
            filled = int(fraction * self._width)
            bar = "#" * filled + "-" * (self._width - filled)
            end = "\n" if done >= total else ""
            self._stream.write(f"\r{phase:<12} [{bar}] {fraction:6.1%} {done:,}/{total:,}{end}")
        else:
            step = int(fraction * 10)
            if self._last_step.get(phase) == step:
                return
            self._last_step[phase] = step
            self._stream.write(f"{phase}: {done:,}/{total:,} ({fraction:.0%})\n")
        self._stream.flush()
