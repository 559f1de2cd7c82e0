"""Atomic writes: a crash mid-write leaves the old file (or folder) or the new one, never half of one.

Output names a user gives (``--out``, ``--json``) go through :func:`check_output` before any work and
:func:`write_output` at the end: ``-`` means standard output, and a name that exists but is not a regular file (a
device such as ``/dev/stdout``, a named pipe, a folder) is refused. Writing "then renaming" onto a device path
would replace the device node itself with a plain file.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
import tempfile
import typing
import uuid
from pathlib import Path
from typing import Callable, Iterator

from scan_viz.errors import ScanVizError

#: The output name that means standard output.
STDOUT = "-"


#: Folders of device and process nodes: ``/dev/stdout`` is a link to ``/proc/self/fd/1``, which may well be a
#: regular file (output redirected), and renaming onto it would replace the link itself.
_SYSTEM_FOLDERS = ("/dev/", "/proc/")


def check_output(path: str | os.PathLike, what: str = "output file", folder_must_exist: bool = True) -> None:
    """ScanVizError unless ``path`` is ``-`` (standard output), a new name in an existing folder (any folder when
    ``folder_must_exist`` is False: the writer makes it), or an existing regular file.

    Only ``os.stat`` is called. Names under /dev or /proc (as given or once links are followed) are refused too.
    """
    if str(path) == STDOUT:
        return
    for name in _link_chain(path):
        if name.startswith(_SYSTEM_FOLDERS):
            raise ScanVizError(f"{what} {path} is a device or process path, not a file: give a file name, or "
                               f"{STDOUT} for standard output")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if folder_must_exist and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise ScanVizError(f"cannot write {what} {path}: its folder does not exist; create it first") from None
        return
    except OSError as exc:
        raise ScanVizError(f"cannot write {what} {path} ({exc.strerror or type(exc).__name__}): check the "
                           "path") from None
    if stat.S_ISDIR(info.st_mode):
        raise ScanVizError(f"{what} {path} is a folder: give a file name")
    if not stat.S_ISREG(info.st_mode):
        raise ScanVizError(f"{what} {path} is not a regular file (a device, pipe or socket): give a file name, "
                           f"or {STDOUT} for standard output")


def _link_chain(path: str | os.PathLike, max_hops: int = 40) -> list[str]:
    """``path`` as an absolute name, then each name its links lead to, one hop at a time, and the real path."""
    names = [os.path.abspath(path)]
    while os.path.islink(names[-1]) and len(names) <= max_hops:
        names.append(os.path.abspath(os.path.join(os.path.dirname(names[-1]), os.readlink(names[-1]))))
    return names + [os.path.realpath(path)]


def write_output(path: str | os.PathLike, data: bytes | str, what: str = "output file",
                 stdout: typing.TextIO | None = None) -> None:
    """Write ``data`` to the file ``path`` atomically, or to ``stdout`` (default: ``sys.stdout``) when ``path`` is
    ``-``."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if str(path) == STDOUT:
        stream = stdout or sys.stdout
        stream.flush()
        stream.buffer.write(raw)
        stream.buffer.flush()
        return
    check_output(path, what)
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(raw)


def _partial_name(target: Path, what: str) -> Path:
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.{what}")


@contextlib.contextmanager
def atomic_path(target: Path, hint: str = "check the free space and permissions of the folder") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it is renamed onto ``target``, else removed.

    The file's final mode is that of any new file (0o666 less the umask), learnt by creating the temporary name
    once and removing it before the writer runs: reading the umask means setting it, which would race with
    other threads creating files (the app serves every session from one process).
    """
    check_output(target, folder_must_exist=False)
    # a link is followed: the rename replaces the file it names, and the link stays a link
    target = Path(os.path.realpath(target)) if os.path.islink(target) else Path(target)
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
