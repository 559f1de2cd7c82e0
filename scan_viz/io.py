"""Atomic writes: a crash mid-write leaves the old file (or folder) or the new one, never half of one."""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterator

from scan_viz.errors import ScanVizError


def _partial_name(target: Path, what: str) -> Path:
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.{what}")


@contextlib.contextmanager
def atomic_path(target: Path, hint: str = "check the free space and permissions of the folder") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it is renamed onto ``target``, else removed.

    The file's final mode is that of any new file (0o666 less the umask), learnt by creating the temporary name
    once and removing it before the writer runs: reading the umask means setting it, which would race with
    other threads creating files (the app serves every session from one process).
    """
    target = Path(target)
    tmp = _partial_name(target, "partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        mode = stat.S_IMODE(os.stat(tmp).st_mode)
        tmp.unlink()  # writers may link or rename onto the name, so it is handed over absent
        yield tmp
        # some writers replace the file with an owner-only one; a model or data file should read like any other
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as exc:
        raise ScanVizError(f"cannot write {target}: {exc.strerror or exc}; {hint}") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_dir_atomic(target: Path, write: Callable[[Path], None],
                     hint: str = "check the free space and permissions of the folder") -> None:
    """Fill a fresh temporary folder with ``write(folder)``, then swap it in place of ``target``.

    The folder is made with ``os.mkdir(..., 0o777)``, so it gets the mode of any new folder (less the umask).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial_name(target, "partial-dir")
    try:
        os.mkdir(tmp, 0o777)
        write(tmp)
        _swap_in(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ScanVizError(f"cannot write {target}: {exc.strerror or exc}; {hint}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, target: Path) -> None:
    """Put the folder ``new`` in place of ``target``; if that fails, ``target`` is left as it was.

    A folder cannot be renamed over a non-empty one, so the old folder is first parked in a temporary folder
    beside it and put back when the second rename fails.
    """
    if not target.exists():
        os.replace(new, target)
        return
    parking = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    parked = parking / target.name
    try:
        os.replace(target, parked)
    except OSError:
        parking.rmdir()
        raise
    try:
        os.replace(new, target)
    except OSError:
        os.replace(parked, target)  # should this fail too, the old folder stays in ``parking``, not deleted
        parking.rmdir()
        raise
    shutil.rmtree(parking, ignore_errors=True)
