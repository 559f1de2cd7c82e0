"""Per-iteration progress: a tqdm bar on a terminal, plain lines every ``log_every`` iterations elsewhere.

Plain lines follow the official train.py's log (``Epoch: [e][i/n]``) so a log file reads like the authors'.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

from scan_viz.progress import Progress


def _tqdm() -> Any | None:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def use_bar() -> bool:
    """A redrawn bar only makes sense on a terminal; logs redirected to a file get plain lines."""
    return sys.stderr.isatty() and _tqdm() is not None


class EpochProgress:
    """Reports the iterations of one epoch. ``update(step, loss)`` after each iteration; ``close()`` at the end."""

    def __init__(self, epoch: int, total: int, enabled: bool, log_every: int, log: Callable[[str], None]) -> None:
        self.epoch, self.total, self.log_every, self.log = epoch, total, log_every, log
        self.enabled = enabled
        self.bar = _tqdm()(total=total, desc=f"epoch {epoch + 1}", leave=False, dynamic_ncols=True) \
            if enabled and use_bar() else None
        self.loss_sum = 0.0
        self.count = 0

    def update(self, step: int, loss: float, lr: float) -> None:
        """``step``: 1-based iteration within the epoch; ``loss``: this batch's loss."""
        self.loss_sum += loss
        self.count += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if step % self.log_every == 0 or step == self.total:
                self.bar.set_postfix(loss=f"{loss:.4f}", avg=f"{self.mean_loss:.4f}", lr=f"{lr:.1e}")
        elif step % self.log_every == 0 or step == self.total:
            self.log(f"Epoch: [{self.epoch}][{step}/{self.total}]  loss {loss:.4f} ({self.mean_loss:.4f})  "
                     f"lr {lr:.1e}")

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.count, 1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def scoring_progress(enabled: bool) -> tuple[Callable[[int, int], None] | None, Callable[[], None]]:
    """A ``progress(done, total)`` callback for the dev scoring (a bar on a terminal, else None) and a closer."""
    if not (enabled and use_bar()):
        return None, lambda: None
    bar = Progress("validation", lines=False, leave=False)
    return bar, bar.close
