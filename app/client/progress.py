"""A one-line progress bar on a terminal, or one line per change when output is a file."""

from __future__ import annotations

from typing import TextIO

BAR_WIDTH = 30
KIB = 1024


def format_bytes(count: int) -> str:
    """`812 B`, `7.9 KiB`, `3.0 MiB`."""
    if count < KIB:
        return f"{count} B"
    if count < KIB * KIB:
        return f"{count / KIB:.1f} KiB"
    return f"{count / (KIB * KIB):.1f} MiB"


def render_line(phase: str, percent: int, detail: str = "", width: int = BAR_WIDTH) -> str:
    """`processing [############------------------]  40%  detail`."""
    percent = max(0, min(100, percent))
    filled = width * percent // 100
    line = f"{phase:<10} [{'#' * filled}{'-' * (width - filled)}] {percent:3d}%"
    return f"{line}  {detail}" if detail else line


class Progress:
    """Shows the phase of a generation and its percentage on a stream (stderr).

    On a terminal the one line is redrawn in place; otherwise a line is printed only when the
    phase changes or the percentage moves by at least `steps[phase]` points (1 unless given)
    since the last printed line, or reaches 100.
    """

    def __init__(
        self, stream: TextIO, *, tty: bool | None = None, steps: dict[str, int] | None = None
    ) -> None:
        self._stream = stream
        self._tty = stream.isatty() if tty is None else tty
        self._steps = steps or {}
        self._printed: tuple[str, int] | None = None  # last line printed (not on a terminal)
        self._last: tuple[str, int, str] | None = None  # last update, redrawn after a message
        self._drawn = 0  # length of the line now on the terminal, 0 when none

    def update(self, phase: str, percent: int, detail: str = "") -> None:
        """Show `phase` at `percent`."""
        percent = max(0, min(100, percent))
        self._last = (phase, percent, detail)
        if self._tty:
            line = render_line(phase, percent, detail)
            self._stream.write("\r" + line.ljust(self._drawn))
            self._drawn = len(line)
            self._stream.flush()
        elif self._changed(phase, percent):
            self._stream.write(render_line(phase, percent, detail) + "\n")
            self._stream.flush()
            self._printed = (phase, percent)

    def _changed(self, phase: str, percent: int) -> bool:
        if self._printed is None or self._printed[0] != phase:
            return True
        last = self._printed[1]
        if percent == last:
            return False
        return percent == 100 or abs(percent - last) >= self._steps.get(phase, 1)

    def message(self, text: str) -> None:
        """Print a line of text; on a terminal the bar is redrawn below it."""
        if self._tty and self._drawn:
            self._stream.write("\r" + " " * self._drawn + "\r" + text + "\n")
            self._drawn = 0
            if self._last is not None:
                self.update(*self._last)
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def close(self) -> None:
        """End the redrawn line, so that what follows starts on a line of its own."""
        if self._tty and self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = 0
