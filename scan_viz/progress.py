"""Progress of a long loop as a ``progress(done, total)`` callback, the one kind the library's loops report to.

On a terminal it is a tqdm bar; elsewhere (a log file, a pipe) a plain line every 10%, so a long run shows it is
alive without filling the log with redrawn bars (or nothing, with ``lines=False``).
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm


class Progress:
    """``progress(done, total)``: ``done`` of ``total`` items finished; ``close()`` ends a bar left unfinished.

    ``stream``: where to report (default: ``sys.stderr`` as it is at each call). ``unit``: the bar's unit.
    ``lines``: print a line every 10% off a terminal. ``leave``: keep the finished bar on screen.
    """

    def __init__(self, label: str, stream: TextIO | None = None, unit: str = "it", lines: bool = True,
                 leave: bool = True) -> None:
        self.label, self.stream, self.unit, self.lines, self.leave = label, stream, unit, lines, leave
        self.bar: "tqdm | None" = None
        self.last = -1  # the last percentage printed as a line

    def __call__(self, done: int, total: int) -> None:
        out = self.stream or sys.stderr
        if out.isatty():
            if self.bar is None:
                from tqdm import tqdm  # only for a terminal: the CLI's start (and its fast refusals) stay light

                self.bar = tqdm(total=total, desc=self.label, unit=self.unit, file=out, leave=self.leave,
                                dynamic_ncols=True)
            self.bar.total = total
            self.bar.update(done - self.bar.n)
            if done >= total:
                self.close()
            return
        if not self.lines:
            return
        pct = int(100 * done / max(total, 1))
        if pct // 10 != self.last // 10 or (done >= total and self.last < 100):
            self.last = pct
            print(f"{self.label}: {pct}% ({done:,} of {total:,})", file=out, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
