"""Progress bars: the one helper every long loop uses (:func:`bar`).

On a terminal it is tqdm's bar, which ends at 100% even when the work took less than one redraw
interval. To anything else (a log file, a pipe, CI) tqdm would record every redraw (a 10-epoch
training log grew to megabytes of ``\\r``-separated bars); there :class:`Bar` writes one plain line
at most every :data:`LOG_INTERVAL_S` seconds or each :data:`LOG_STEP` of the work, whichever
comes first, and always a last line when the bar closes.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm

#: Seconds between two progress lines written to a non-terminal stream.
LOG_INTERVAL_S = 30.0
#: A progress line in a log: no bar drawing, just where the work is and how fast it goes.
LOG_FORMAT = ("{desc}: {percentage:3.0f}% ({n_fmt}/{total_fmt}) "
              "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")
#: Share of the work between two progress lines written to a non-terminal stream.
LOG_STEP = 0.10


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Bar(tqdm):
    """A tqdm bar that writes plain lines, at most every ~30 s or 10%, when its stream is not a
    terminal (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        stream = kwargs.get("file") or sys.stderr
        self._lines = not _is_terminal(stream)
        if self._lines:
            # display() decides when to write; tqdm must ask it at every update
            kwargs.update(mininterval=0, miniters=1, dynamic_ncols=False, ascii=True)
            kwargs.setdefault("bar_format", LOG_FORMAT)
        self._last_t = 0.0
        self._last_n: float | None = None
        super().__init__(*args, **kwargs)
        if self._lines and not self.total and getattr(self, "bar_format", None) == LOG_FORMAT:
            self.bar_format = None  # no percentage without a total (a download of unknown size)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool | None:
        if not self._lines:
            return super().display(msg, pos)
        if msg is not None:  # tqdm clears with msg="" on close: nothing to clear in a log
            return None
        now = time.monotonic()
        total = self.total or 0
        due = self._last_n is None or now - self._last_t >= LOG_INTERVAL_S or (
            total and self.n - self._last_n >= LOG_STEP * total) or (
            total and self.n >= total and self._last_n < total)
        if due and self._last_n != self.n:
            self.fp.write(self.__str__().strip() + "\n")
            self.fp.flush()
            self._last_t, self._last_n = now, self.n
        return None

    def close(self) -> None:
        if self.disable:
            return
        if self._lines:
            if self._last_n != self.n:  # the last line: where the work ended
                self._last_t = -LOG_INTERVAL_S
                self.display()
            self.leave = False  # nothing to leave or clear in a log
        elif self.total and self.n >= self.total:
            self.refresh()  # a fast bar still shows its 100%
        super().close()


def bar(*args: Any, **kwargs: Any) -> Bar:
    """A progress bar (tqdm's arguments) for a terminal or a log: see the module's docstring."""
    kwargs.setdefault("dynamic_ncols", True)
    return Bar(*args, **kwargs)


def write(text: str, file: Any = None) -> None:
    """Write a line beside the progress bars (above a terminal's bar, not through it)."""
    tqdm.write(text, file=file or sys.stderr)
