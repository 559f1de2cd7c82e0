"""Reading files that someone else names: regular files only, sizes checked before any read, folders confined.

Two layers, both here so there is one place to audit:

- :func:`regular_file` and :func:`read_text`, used by the library's loaders: ``os.stat`` first, so a device
  (``/dev/zero``) or a named pipe is refused at once instead of being read forever or blocking, and a metadata
  file (a vocabulary, a config, a gallery's records) over its size cap is refused before it is opened.
- :class:`AllowedRoots`, used by the app: a visitor may name paths on the server only when the operator lists
  folders in ``SCAN_VIZ_ALLOWED_ROOTS`` (``os.pathsep``-separated, like ``PATH``). Each path a visitor types is
  resolved to its real path (symlinks and ``..`` followed) and must lie inside one of those folders; a named
  folder's members are checked the same way, one level after another, and the bytes it holds are capped, all
  before a loader reads anything. A regular file with more than one name (a hard link, which ``realpath`` does
  not see through) or on another file system than its root is refused too. A path outside the folders gets the
  same message as a missing one, so the answer says nothing about what exists elsewhere; no message quotes a
  file's content.
"""
from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from scan_viz.errors import ScanVizError

ENV_ALLOWED_ROOTS = "SCAN_VIZ_ALLOWED_ROOTS"
MB = 1 << 20
GB = 1 << 30
#: Metadata files the loaders read whole (an official vocabulary is under 1 MB, a gallery's records a few MB).
MAX_JSON_BYTES = 64 * MB
#: A model's or detector's config.json (a few hundred bytes).
MAX_CONFIG_BYTES = 1 * MB
#: Folder members examined before a named folder is refused (a COCO image folder holds 123,287 images).
MAX_FOLDER_ENTRIES = 250_000

PathLike = str | os.PathLike


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / MB:,.0f} MB" if n_bytes >= MB else f"{n_bytes:,} bytes"


def _refuse_mode(mode: int, what: str, path: PathLike) -> None:
    if stat.S_ISDIR(mode):
        raise ScanVizError(f"{what} {path} is a folder: give the file itself")
    if not stat.S_ISREG(mode):
        raise ScanVizError(f"{what} {path} is not a regular file (a device, pipe or socket): give a file")


def regular_file(path: PathLike, what: str, max_bytes: int | None = None) -> int:
    """The size of ``path`` if it is a regular file of at most ``max_bytes``; ScanVizError otherwise.

    Only ``os.stat`` is called: nothing is opened, so a FIFO or a device is refused without blocking or reading.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ScanVizError(f"{what} {path} does not exist: check the path") from None
    except OSError as exc:
        raise ScanVizError(f"cannot read {what} {path} ({exc.strerror or type(exc).__name__}): check the path and "
                           "its permissions") from None
    _refuse_mode(info.st_mode, what, path)
    if max_bytes is not None and info.st_size > max_bytes:
        raise ScanVizError(f"{what} {path} is {_mb(info.st_size)}, over the {_mb(max_bytes)} limit for such a file: "
                           "check that it is the right file")
    return int(info.st_size)


def read_bytes(path: PathLike, what: str, max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, checked before it is opened."""
    regular_file(path, what, max_bytes)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)  # the file may have grown since the check
    except OSError as exc:
        raise ScanVizError(f"cannot read {what} {path} ({exc.strerror or type(exc).__name__}): check its "
                           "permissions") from None
    if len(data) > max_bytes:
        raise ScanVizError(f"{what} {path} is over the {_mb(max_bytes)} limit for such a file: check that it is "
                           "the right file")
    return data


def read_text(path: PathLike, what: str, max_bytes: int = MAX_JSON_BYTES) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes``, checked before it is opened."""
    data = read_bytes(path, what, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ScanVizError(f"{what} {path} is not UTF-8 text: give the JSON file itself") from None


@dataclasses.dataclass(frozen=True)
class Allowance:
    """What a visitor may name for one input: a file and/or a folder, and the bytes it may hold.

    ``max_bytes`` caps a file, or the sum of a folder's files; ``max_file_bytes`` each file of a folder.
    """

    label: str
    file: bool
    folder: bool
    max_bytes: int | None
    max_file_bytes: int


#: The inputs of the app's "files on this server" form. The caps keep one load to a few GB at most: an official
#: SCAN checkpoint is about 55 MB, bottom-up-attention features of 1,000 images about 400 MB as TSV.
ALLOWANCES: dict[str, Allowance] = {
    "checkpoint": Allowance("Checkpoint", True, True, 1 * GB, 1 * GB),
    "vocab": Allowance("Vocabulary JSON", True, False, MAX_JSON_BYTES, MAX_JSON_BYTES),
    "regions": Allowance("Region features", True, True, 2 * GB, 2 * GB),
    # images are read one at a time when shown, so only each file is capped
    "images": Allowance("Images folder", False, True, None, 64 * MB),
    "gallery": Allowance("Gallery folder", False, True, 4 * GB, 2 * GB),
    "detector": Allowance("Detector folder", False, True, 1 * GB, 1 * GB),
}


def _inside(real: str, roots: tuple[str, ...]) -> bool:
    return _root_of(real, roots) is not None


def _root_of(real: str, roots: tuple[str, ...]) -> str | None:
    """The root ``real`` lies in (the longest, for nested roots), or None."""
    inside = [root for root in roots if real == root or real.startswith(root.rstrip(os.sep) + os.sep)]
    return max(inside, key=len) if inside else None


def _refuse_other_names(info: os.stat_result, root_dev: int, what: str) -> None:
    """Refuse a regular file that may be another file's second name: realpath sees through symlinks but not
    hard links, so a hard link inside a root to a file outside it (or a file on another file system mounted
    inside the root) would otherwise be read."""
    if info.st_nlink > 1:
        raise ScanVizError(f"{what} has more than one name on this server (a hard link): copy the file into the "
                           "shared folder instead")
    if info.st_dev != root_dev:
        raise ScanVizError(f"{what} is on another file system than the shared folder: copy the file into it")


@dataclasses.dataclass(frozen=True)
class AllowedRoots:
    """Folders on the server whose files visitors may name; ``roots`` are real (resolved) absolute paths."""

    roots: tuple[str, ...]

    @classmethod
    def of(cls, *folders: PathLike) -> AllowedRoots:
        return cls(tuple(os.path.realpath(folder) for folder in folders))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AllowedRoots | None:
        """The operator's ``SCAN_VIZ_ALLOWED_ROOTS`` (``dir1:dir2``); None when unset or blank (paths are off).

        Relative entries, which would depend on the server's working folder, are ignored.
        """
        env = os.environ if environ is None else environ
        folders = [part.strip() for part in env.get(ENV_ALLOWED_ROOTS, "").split(os.pathsep)]
        folders = [folder for folder in folders if folder and os.path.isabs(folder)]
        return cls.of(*folders) if folders else None

    def __add__(self, other: AllowedRoots) -> AllowedRoots:
        return AllowedRoots(self.roots + other.roots)

    def contains(self, path: PathLike) -> bool:
        """Whether ``path``'s real path lies inside one of the roots (nothing is opened)."""
        return _inside(os.path.realpath(path), self.roots)

    def check(self, typed: str, kind: str) -> Path:
        """The real path of ``typed`` once it is allowed for input ``kind`` (a key of :data:`ALLOWANCES`).

        Raises ScanVizError when the path is outside the roots or missing (one message for both), is the wrong
        type (a folder where a file is expected, a device, a pipe), or holds more bytes than allowed; for a
        folder, when a member links outside the roots, is not a regular file or folder, or is too large.
        Only ``os.stat``/``os.scandir`` are called: no file is opened.
        """
        allowance = ALLOWANCES[kind]
        label = allowance.label
        unknown = ScanVizError(f"{label}: no such file or folder among those this server shares; check the path "
                               "(it must lie inside a folder the operator listed in "
                               f"{ENV_ALLOWED_ROOTS})")
        typed = (typed or "").strip()
        if not typed or "\0" in typed:
            raise unknown
        real = os.path.realpath(typed)
        root = _root_of(real, self.roots)
        if root is None:
            raise unknown
        try:
            info, root_dev = os.stat(real), os.stat(root).st_dev
        except OSError:
            raise unknown from None
        if stat.S_ISDIR(info.st_mode):
            if not allowance.folder:
                raise ScanVizError(f"{label} is a folder: give the file itself")
            self._check_members(Path(real), allowance)
        elif stat.S_ISREG(info.st_mode):
            if not allowance.file:
                raise ScanVizError(f"{label} is a file: give the folder")
            if allowance.max_bytes is not None and info.st_size > allowance.max_bytes:
                raise ScanVizError(f"{label} is {_mb(info.st_size)}, over this server's {_mb(allowance.max_bytes)} "
                                   "limit: give a smaller file")
            _refuse_other_names(info, root_dev, label)
        else:
            raise ScanVizError(f"{label} is not a regular file (a device, pipe or socket): give a file")
        return Path(real)

    def _check_members(self, folder: Path, allowance: Allowance) -> None:
        """Every member of ``folder``, sub-folders included: inside the roots, regular, sizes within the caps."""
        label, total, seen_entries = allowance.label, 0, 0
        pending = [(folder, "")]
        visited = {str(folder)}
        root_devs: dict[str, int] = {}
        while pending:
            real_dir, shown = pending.pop()
            try:
                entries = list(os.scandir(real_dir))
            except OSError as exc:
                raise ScanVizError(f"{label}: cannot list {shown or 'the folder'} "
                                   f"({exc.strerror or type(exc).__name__}): check its permissions") from None
            for entry in entries:
                seen_entries += 1
                if seen_entries > MAX_FOLDER_ENTRIES:
                    raise ScanVizError(f"{label} holds more than {MAX_FOLDER_ENTRIES:,} files and folders: give a "
                                       "smaller folder")
                name = f"{shown}{entry.name}"
                # members of a real folder are real unless they are links: resolve only those
                real = os.path.realpath(entry.path) if entry.is_symlink() else entry.path
                member_root = _root_of(real, self.roots)
                if member_root is None:
                    raise ScanVizError(f"{label}: {name} links outside the folders this server shares; remove the "
                                       "link or copy the file")
                try:
                    info = os.stat(real)
                except OSError:
                    continue  # a dangling link: the loader names it if it needs it
                if stat.S_ISDIR(info.st_mode):
                    if real not in visited:
                        visited.add(real)
                        pending.append((Path(real), f"{name}/"))
                    continue
                if not stat.S_ISREG(info.st_mode):
                    raise ScanVizError(f"{label}: {name} is not a regular file (a device, pipe or socket); remove "
                                       "it or give another folder")
                if member_root not in root_devs:
                    root_devs[member_root] = os.stat(member_root).st_dev  # it holds this member: it exists
                _refuse_other_names(info, root_devs[member_root], f"{label}: {name}")
                if info.st_size > allowance.max_file_bytes:
                    raise ScanVizError(f"{label}: {name} is {_mb(info.st_size)}, over this server's "
                                       f"{_mb(allowance.max_file_bytes)} limit per file")
                total += info.st_size
                if allowance.max_bytes is not None and total > allowance.max_bytes:
                    raise ScanVizError(f"{label} holds more than this server's {_mb(allowance.max_bytes)} limit: "
                                       "give a smaller folder")
