"""Atomic writes: a crash mid-write leaves the old file (or folder) or the new one, never half of one."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterator

from scan_viz.errors import ScanVizError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: Path, hint: str = "check the free space and permissions of the folder") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it is renamed onto ``target``, else removed."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        # some writers create owner-only files; a model or data file should read like any other
        os.chmod(tmp, 0o666 & ~_umask())
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
    """Fill a fresh temporary folder with ``write(folder)``, then swap it in place of ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private
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
