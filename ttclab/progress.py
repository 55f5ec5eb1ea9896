"""Progress bars that suit where the output goes: tqdm on a terminal; in a log file, a CI log or a
pipe (where every carriage-return redraw of tqdm becomes part of one endless line) a plain line at
every tenth of the work, and nothing for transient (`leave=False`) bars."""

from __future__ import annotations

import sys

from tqdm import tqdm


class LineProgress:
    """The subset of tqdm's interface the loops use, writing one line per `every` of the total."""

    def __init__(self, total: int, desc: str, initial: int = 0, every: float = 0.1, file=None):
        self.total, self.desc, self.n, self.file = max(int(total), 1), desc, int(initial), file or sys.stderr
        self.every, self.postfix = every, ""
        self._printed = self._tenth()

    def _tenth(self) -> int:
        return int(self.n / self.total / self.every + 1e-9)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._tenth() > self._printed:
            self._printed = self._tenth()
            self._line()

    def set_postfix(self, **values) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def _line(self) -> None:
        pct = round(100 * min(self.n / self.total, 1.0))
        print(f"{self.desc}: {pct:3d}% ({self.n}/{self.total}) {self.postfix}".rstrip(), file=self.file, flush=True)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress_bar(total: int, desc: str = "", *, disable: bool = False, initial: int = 0, leave: bool = True,
                 file=None):
    """tqdm(total, desc, disable, initial, leave) when `file` (default stderr) is a terminal, else
    LineProgress (or a disabled bar for leave=False ones)."""
    stream = file or sys.stderr
    if disable or not leave or stream.isatty():
        return tqdm(total=total, desc=desc, initial=initial, leave=leave, file=stream,
                    disable=disable or not stream.isatty())
    return LineProgress(total, desc, initial=initial, file=stream)
