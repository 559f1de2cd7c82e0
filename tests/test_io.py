"""Atomic writes (scan_viz.io, scan_viz.train.state): a failure at any step leaves the old file or folder as it
was and no temporary file or folder behind; files and folders get the mode of any new one without touching the
process umask (the app serves every session from threads of one process, so setting the umask to read it could
make another thread's file world-writable)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from scan_viz import io
from scan_viz.errors import ScanVizError
from scan_viz.train import state


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def fail_replace_at(monkeypatch, call: int) -> None:
    """Make the ``call``-th os.replace (1-based) fail as a full disk would; the others run."""
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == call:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


@pytest.fixture
def old_file(tmp_path) -> Path:
    target = tmp_path / "model.json"
    target.write_text("old", encoding="utf-8")
    return target


def test_atomic_path_replaces_the_file_on_success(old_file):
    io.write_text_atomic(old_file, "new")
    assert old_file.read_text(encoding="utf-8") == "new"
    assert listing(old_file.parent) == ["model.json"]


@pytest.mark.parametrize("error", [RuntimeError("the writer crashed"), OSError(28, "No space left on device")])
def test_atomic_path_failure_mid_write_keeps_the_old_file(old_file, error):
    expected = ScanVizError if isinstance(error, OSError) else RuntimeError
    with pytest.raises(expected) as info:
        with io.atomic_path(old_file) as tmp:
            tmp.write_text("half of the new", encoding="utf-8")
            raise error
    assert old_file.read_text(encoding="utf-8") == "old"
    assert listing(old_file.parent) == ["model.json"]
    if expected is ScanVizError:
        assert "No space left on device" in str(info.value) and "\n" not in str(info.value)


def test_atomic_path_failed_rename_keeps_the_old_file(old_file, monkeypatch):
    fail_replace_at(monkeypatch, 1)
    with pytest.raises(ScanVizError, match="cannot write .*model.json"):
        io.write_text_atomic(old_file, "new")
    assert old_file.read_text(encoding="utf-8") == "old"
    assert listing(old_file.parent) == ["model.json"]


@pytest.fixture
def old_dir(tmp_path) -> Path:
    target = tmp_path / "gallery"
    target.mkdir()
    (target / "a.txt").write_text("old a", encoding="utf-8")
    return target


def write_new(folder: Path) -> None:
    (folder / "b.txt").write_text("new b", encoding="utf-8")


def test_write_dir_atomic_swaps_the_folder_on_success(old_dir):
    io.write_dir_atomic(old_dir, write_new)
    assert listing(old_dir) == ["b.txt"] and listing(old_dir.parent) == ["gallery"]


@pytest.mark.parametrize("error", [RuntimeError("the writer crashed"), OSError(28, "No space left on device")])
def test_write_dir_atomic_failure_mid_write_keeps_the_old_folder(old_dir, error):
    def write(folder: Path) -> None:
        write_new(folder)
        raise error

    with pytest.raises(ScanVizError if isinstance(error, OSError) else RuntimeError):
        io.write_dir_atomic(old_dir, write)
    assert listing(old_dir) == ["a.txt"] and (old_dir / "a.txt").read_text(encoding="utf-8") == "old a"
    assert listing(old_dir.parent) == ["gallery"]


@pytest.mark.parametrize("call", [1, 2], ids=["parking the old folder", "moving the new one in"])
def test_write_dir_atomic_failed_swap_keeps_the_old_folder(old_dir, monkeypatch, call):
    fail_replace_at(monkeypatch, call)
    with pytest.raises(ScanVizError, match="No space left on device"):
        io.write_dir_atomic(old_dir, write_new)
    assert listing(old_dir) == ["a.txt"] and (old_dir / "a.txt").read_text(encoding="utf-8") == "old a"
    assert listing(old_dir.parent) == ["gallery"]


def test_run_state_failure_mid_save_keeps_the_last_good_state(tmp_path, monkeypatch):
    path = tmp_path / state.LAST_STATE
    state.save_last(path, {"epoch": 3, "weights": torch.arange(4.0)})
    real_save = torch.save

    def crash_half_way(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a zip")  # what a killed or full-disk write leaves
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crash_half_way)
    with pytest.raises(ScanVizError, match="run folder"):
        state.save_last(path, {"epoch": 4, "weights": torch.zeros(4)})
    monkeypatch.setattr(torch, "save", real_save)
    resumed = state.load_last(path)
    assert resumed["epoch"] == 3 and torch.equal(resumed["weights"], torch.arange(4.0))
    assert listing(tmp_path) == [state.LAST_STATE]


def test_run_folder_text_and_dir_writes_keep_the_old_on_failure(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    state.write_text_atomic(log, '{"epoch": 1}\n')
    best = tmp_path / "best"
    state.write_dir_atomic(best, lambda folder: (folder / "config.json").write_text("{}", encoding="utf-8"))
    fail_replace_at(monkeypatch, 1)
    with pytest.raises(ScanVizError, match="run folder"):
        state.write_text_atomic(log, '{"epoch": 2}\n')
    fail_replace_at(monkeypatch, 2)
    with pytest.raises(ScanVizError, match="run folder"):
        state.write_dir_atomic(best, lambda folder: (folder / "model.safetensors").write_bytes(b"x"))
    assert log.read_text(encoding="utf-8") == '{"epoch": 1}\n'
    assert listing(best) == ["config.json"] and listing(tmp_path) == ["best", "log.jsonl"]


# ----------------------------------------------------------------------------- modes, without the umask


@pytest.fixture
def umask_027(monkeypatch):
    """Run with umask 027, and fail any call that changes the umask from inside scan_viz.io."""
    previous = os.umask(0o027)

    def refuse(mask: int) -> int:
        raise AssertionError(f"scan_viz.io called os.umask({mask:#o})")

    monkeypatch.setattr(io.os, "umask", refuse)
    yield
    monkeypatch.undo()
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_get_the_mode_of_a_new_file(tmp_path, umask_027):
    io.write_text_atomic(tmp_path / "a.json", "{}\n")
    assert mode(tmp_path / "a.json") == 0o640 and (tmp_path / "a.json").read_text() == "{}\n"
    with io.atomic_path(tmp_path / "b.bin") as tmp:
        assert not tmp.exists()  # handed over absent: writers may link or rename onto it
        tmp.write_bytes(b"x")
        os.chmod(tmp, 0o600)  # a writer that makes owner-only files
    assert mode(tmp_path / "b.bin") == 0o640
    assert listing(tmp_path) == ["a.json", "b.bin"]  # no partial files left


def test_folders_get_the_mode_of_a_new_folder(tmp_path, umask_027):
    io.write_dir_atomic(tmp_path / "model", lambda d: (d / "config.json").write_text("{}"))
    assert mode(tmp_path / "model") == 0o750
    io.write_dir_atomic(tmp_path / "model", lambda d: (d / "other.json").write_text("{}"))  # replaces
    assert listing(tmp_path / "model") == ["other.json"]
    assert mode(tmp_path / "model") == 0o750 and listing(tmp_path) == ["model"]


# ----------------------------------------------------------------------------- output names a user gives


def test_check_output_refuses_devices_pipes_folders_and_links_to_them(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "stdout-link"
    link.symlink_to("/proc/self/fd/1")
    for path, message in ((fifo, "not a regular file"), (tmp_path, "is a folder"), ("/dev/null", "device"),
                          ("/dev/stdout", "device"), (link, "device")):
        with pytest.raises(ScanVizError, match=message):
            io.check_output(path, "--json")
    io.check_output("-")  # standard output
    io.check_output(tmp_path / "new.json")
    (tmp_path / "old.json").write_text("{}")
    io.check_output(tmp_path / "old.json")


def test_atomic_write_through_a_link_keeps_the_link(tmp_path):
    real = tmp_path / "results.json"
    real.write_text("old")
    link = tmp_path / "latest.json"
    link.symlink_to(real)
    io.write_text_atomic(link, "new")
    assert link.is_symlink() and real.read_text() == "new"


def test_write_output_dash_is_standard_output(tmp_path, capsysbinary, monkeypatch):
    monkeypatch.chdir(tmp_path)
    io.write_output("-", b"\x93NUMPY bytes")
    assert capsysbinary.readouterr().out == b"\x93NUMPY bytes"
    assert not (tmp_path / "-").exists()
