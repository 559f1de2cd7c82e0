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
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ScanVizError(f"cannot write {target}: {exc.strerror or exc}; {hint}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
