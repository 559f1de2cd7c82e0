"""scan_viz.progress.Progress: the one progress callback (CLI scoring, indexing, training's validation)."""
from __future__ import annotations

import io

from scan_viz.progress import Progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_tqdm_bar_that_closes_when_done():
    out = FakeTerminal()
    report = Progress("scoring", out, unit="img")
    for done in range(0, 501, 100):
        report(done, 500)
    text = out.getvalue()
    assert "scoring" in text and "100%" in text and "500/500" in text and "img" in text
    assert report.bar is None  # closed at done == total


def test_lines_off_a_terminal_can_be_turned_off():
    out = io.StringIO()
    report = Progress("indexing", out, lines=False)
    for done in range(0, 11):
        report(done, 10)
    assert out.getvalue() == ""


def test_close_ends_an_unfinished_bar():
    out = FakeTerminal()
    report = Progress("validation", out, leave=False)
    report(3, 10)
    assert report.bar is not None
    report.close()
    assert report.bar is None
