"""scan_viz.regions.store.read_lines, the one reader of caption and id files, against the readers it replaced (restated)."""
from __future__ import annotations

import pytest

from scan_viz.regions.store import read_lines
from scan_viz.errors import ScanVizError

TRICKY = ["a dog\r\n", "  a cat  \n", "\n", "a line\u2028separator inside\n", "tab\tinside\n", "last without newline"]


def old_precomp_lines(path) -> list[str]:
    """load_precomp's caption reading before read_lines."""
    with open(path, encoding="utf-8", newline="\n") as f:
        return [line.strip() for line in f]


@pytest.mark.parametrize("ending", ["", "\n", "\n\n"])
def test_same_lines_as_the_official_style_precomp_reader(tmp_path, ending):
    path = tmp_path / "test_caps.txt"
    path.write_bytes(("".join(TRICKY) + ending).encode("utf-8"))
    got = read_lines(path, "captions")
    assert got == old_precomp_lines(path)
    assert got[0] == "a dog" and got[2] == "" and got[3] == "a line\u2028separator inside"


def test_an_empty_file_has_no_lines(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    assert read_lines(tmp_path / "empty.txt", "captions") == []


def test_bad_files_are_one_line_errors(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ScanVizError, match="not UTF-8 text.*re-save it as UTF-8"):
        read_lines(tmp_path / "latin1.txt", "captions")
    (tmp_path / "big.txt").write_bytes(b"x" * 101)
    with pytest.raises(ScanVizError, match="limit"):
        read_lines(tmp_path / "big.txt", "captions", max_bytes=100)
    with pytest.raises(ScanVizError):
        read_lines(tmp_path, "captions")  # a folder
