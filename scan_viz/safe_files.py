"""Reading files whose content someone else chose: each reader bounds what a file may expand to before allocating.

:mod:`scan_viz.safe_paths` decides whether a path may be opened at all (regular file, size, allowed folder); this
module decides how much a file that passed may become in memory once it is read. A few kilobytes can declare
gigabytes (a deflated zip member, an ``.npy`` header, a safetensors header, a padded region set), so every reader
checks what the file *declares* against a cap, and against the bytes the file actually holds, before anything is
allocated; the parsers that do the real work (numpy, zipfile, safetensors, json, torch) then only ever see a file
whose declarations were checked. One reader per kind of file, all here so there is one place to audit:

- :func:`read_json`: nesting depth and number sizes checked by a linear scan before ``json.loads`` (a deep file
  would raise RecursionError, a 5,000-digit integer ValueError);
- :func:`check_npy` / :func:`load_npy`: shape and dtype from numpy's own header readers, the declared bytes against
  the bytes present and a cap, before ``np.load``;
- :func:`check_zip` / :func:`read_npz`: member count from the end-of-central-directory record (before
  ``zipfile`` builds one object per member) and the sum of declared uncompressed sizes (``ZipInfo.file_size``,
  which is also where ``zipfile`` stops reading a member); an ``.npz``'s arrays also by their headers;
- :func:`check_safetensors`: header length (first 8 bytes), tensor count and each tensor's declared bytes against
  the file, before ``safetensors`` parses it.

Bottom-up-attention TSV rows are read in :mod:`scan_viz.regions.store` (their format's one home) with the caps defined
here. What a whole load may expand to is a :class:`LoadBudget`: every reader charges what it is about to allocate,
so a set of files that are each within their caps still cannot add up past it. The caps, and why:

- :data:`MAX_LOAD_BYTES` (1 GiB) per load (an upload, a folder named on the server, one CLI command): an official
  SCAN checkpoint expands to about 55 MB, bottom-up-attention features of 1,000 images (36 x 2048 float32) to
  300 MB, and adaptive ones (10-100 boxes) padded to 100 boxes to 820 MB. The app passes its own budget.
- :data:`MAX_CHECKPOINT_BYTES` (512 MiB) for what a zip-format checkpoint expands to: 10x an official one (a 30K
  word vocabulary adds 36 MB); :data:`MAX_ZIP_MEMBERS` (4,096): torch writes one member per tensor storage (an
  official checkpoint has about 20), an ``.npz`` one per array.
- :data:`MAX_REGIONS_PER_IMAGE` (512) and :data:`MAX_FEATURE_DIM` (4,096): bottom-up-attention keeps 10-100 boxes
  (36 in the official SCAN data) of 2048-d features; :data:`MAX_NPZ_BYTES` and :data:`MAX_TSV_LINE_BYTES` follow
  from them (one image at the caps, in float64 for ``.npz``, in base64 for a TSV row).
- :data:`MAX_SAFETENSORS_HEADER_BYTES` (1 MiB) and :data:`MAX_TENSORS` (4,096): a scan-viz model's header lists
  about 20 tensors in 2 KB, a detector's a few hundred.
- :data:`MAX_JSON_DEPTH` (64): a gallery record nests about 8 deep; :data:`MAX_JSON_DIGITS` (100): floats are
  written with at most 17 significant digits, integers (ids, indices, sizes) with at most 20. What parsing makes
  (at most about 96 bytes of Python objects per value) is estimated from the text and charged to the budget, so a few MB
  of ``[{},{},...]`` cannot become gigabytes of dicts.

No message quotes a file's content; files are named by their base name (the name the user gave an upload).
"""
from __future__ import annotations

import json
import math
import os
import re
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Iterable

import numpy as np

from scan_viz.errors import ScanVizError
from scan_viz.safe_paths import MAX_JSON_BYTES, MB, read_bytes, regular_file

GiB = 1 << 30
MAX_LOAD_BYTES = 1 * GiB
MAX_CHECKPOINT_BYTES = 512 * MB
MAX_ZIP_MEMBERS = 4_096
MAX_REGIONS_PER_IMAGE = 512
MAX_FEATURE_DIM = 4_096
#: One image at the caps: features in float64 (some extractors save them so) plus boxes and scalars.
MAX_NPZ_BYTES = MAX_REGIONS_PER_IMAGE * (MAX_FEATURE_DIM + 4) * 8 + MB
#: One TSV row at the caps: base64 (4/3) of float32 boxes and features, plus the id and integers.
MAX_TSV_LINE_BYTES = MAX_REGIONS_PER_IMAGE * (MAX_FEATURE_DIM + 4) * 4 * 4 // 3 + 4_096
MAX_SAFETENSORS_HEADER_BYTES = 1 * MB
MAX_TENSORS = 4_096
MAX_JSON_DEPTH = 64
MAX_JSON_DIGITS = 100
JSON_BYTES_PER_VALUE = 96

PathLike = str | os.PathLike


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / MB:,.0f} MB" if n_bytes >= MB else f"{n_bytes:,} bytes"


def shown(path: PathLike) -> str:
    """How a message names a file: its base name, the name the user gave (never a server folder)."""
    return Path(path).name or str(path)


class OverBudget(ScanVizError):
    """A load that would pass its :class:`LoadBudget` (a ScanVizError, so callers that only show it need not care)."""


class LoadBudget:
    """What one load may allocate, in bytes, summed over every file it reads.

    Readers :meth:`charge` what they are about to allocate before allocating it; the charge that would pass
    ``max_bytes`` raises ScanVizError instead. Memory-mapped arrays are not charged (the page cache holds them,
    not the process). One budget per load: the app makes one per upload (or session), the CLI one per command.
    """

    def __init__(self, max_bytes: int = MAX_LOAD_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self.used = 0

    def charge(self, n_bytes: int, what: str) -> None:
        """Count ``n_bytes`` (about to be allocated for ``what``), or ScanVizError when the budget would be passed."""
        if self.used + n_bytes > self.max_bytes:
            raise OverBudget(f"{what} would take {_mb(n_bytes)} in memory, and this load may take "
                             f"{_mb(self.max_bytes)} in all ({_mb(self.used)} already used): give fewer or smaller "
                             "files")
        self.used += n_bytes

    def __repr__(self) -> str:
        return f"LoadBudget(used={self.used:,}, max_bytes={self.max_bytes:,})"


def budget_or_default(budget: LoadBudget | None) -> LoadBudget:
    """``budget``, or a fresh default one for a load that was given none."""
    return LoadBudget() if budget is None else budget


# ------------------------------------------------------------------------------------------------------- JSON
# A JSON string (escapes included); one that is not closed runs to the end, so a scan never restarts inside it and
# stays linear however many quotes a damaged file holds.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.S)
_LONG_NUMBER = re.compile(rb"[0-9]{%d,}" % (MAX_JSON_DIGITS + 1))
_DIGITS = re.compile(rb"[0-9]+")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_SCAN_CHUNK = 1 << 20


def check_json_text(data: bytes, what: str, name: str) -> int:
    """The bytes parsing JSON ``data`` may take as Python objects, once it nests at most :data:`MAX_JSON_DEPTH`
    deep and has no number of more than :data:`MAX_JSON_DIGITS` digits; ScanVizError otherwise.

    A linear scan outside strings (in C and numpy, a million brackets at a time), so nothing is parsed yet. The
    estimate is the text plus :data:`JSON_BYTES_PER_VALUE` for every value and key (one per comma, colon and
    opening bracket): measured with tracemalloc it is 1.2-9x the parse's peak (1.2x for a 30,000-word vocabulary,
    1.9x for nested empty lists, 2.1x for the bundled gallery, 2.6x for empty objects).
    """
    outside = _JSON_STRING.sub(b'""', data)
    brackets = outside.translate(None, _NOT_BRACKETS)
    depth = peak = 0
    for start in range(0, len(brackets), _SCAN_CHUNK):
        chunk = np.frombuffer(brackets, np.uint8, count=min(_SCAN_CHUNK, len(brackets) - start), offset=start)
        running = np.cumsum(np.where((chunk == ord("[")) | (chunk == ord("{")), 1, -1)) + depth
        peak, depth = max(peak, int(running.max())), int(running[-1])
    if peak > MAX_JSON_DEPTH:
        raise ScanVizError(f"{what} {name} nests {peak:,} levels deep; the limit is {MAX_JSON_DEPTH}: it is not a "
                           "file scan-viz wrote, give the right file")
    long = _LONG_NUMBER.search(outside)
    if long is not None:
        digits = len(_DIGITS.match(outside, long.start()).group())
        raise ScanVizError(f"{what} {name} holds a number of {digits:,} digits; the limit is {MAX_JSON_DIGITS}: it is "
                           "not a file scan-viz wrote, give the right file")
    values = 1 + sum(outside.count(c) for c in (b",", b":", b"[", b"{"))
    return len(data) + JSON_BYTES_PER_VALUE * values


def parse_json(data: bytes | str, what: str, name: str, budget: LoadBudget | None = None) -> Any:
    """JSON ``data`` (UTF-8) parsed after :func:`check_json_text`, what it may take charged to ``budget``; every
    failure is a one-line ScanVizError."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    budget_or_default(budget).charge(check_json_text(raw, what, name), f"{what} {name}")
    try:
        # UTF-8 only: json.loads would guess UTF-16/32 from bytes, which the scan above does not read
        text = data if isinstance(data, str) else raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ScanVizError(f"{what} {name} is not UTF-8 text: give the JSON file itself") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScanVizError(f"{what} {name} is not valid JSON ({exc.msg} at line {exc.lineno}): give the right "
                           "file") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # checked above; kept as a last resort
        raise ScanVizError(f"{what} {name} is not usable JSON ({type(exc).__name__}): give the right file") from None


def read_json(path: PathLike, what: str, max_bytes: int = MAX_JSON_BYTES, budget: LoadBudget | None = None) -> Any:
    """The JSON value of a regular file of at most ``max_bytes``, depth, numbers and the objects it makes checked
    before parsing (:func:`parse_json`)."""
    return parse_json(read_bytes(path, what, max_bytes), what, shown(path), budget)


# -------------------------------------------------------------------------------------------------------- .npy
def _npy_header(stream: BinaryIO, what: str, name: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, header bytes) from an .npy stream, by numpy's own header readers."""
    from numpy.lib import format as npy

    start = stream.tell()
    try:
        version = npy.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = npy.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = npy.read_array_header_2_0(stream)
        else:
            raise ValueError(f"version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        # numpy's messages quote the header: name only the kind of failure
        raise ScanVizError(f"{what} {name} is not a readable .npy array ({type(exc).__name__} in its header): "
                           "give the right file") from None
    return tuple(int(n) for n in shape), bool(fortran), np.dtype(dtype), stream.tell() - start


def check_npy(stream: BinaryIO, available: int, what: str, name: str, max_bytes: int,
              kinds: str = "fiub") -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, bytes) an .npy stream declares, once they fit: dtype kind in ``kinds`` (never objects), at
    most ``max_bytes`` of data and no more than the ``available`` bytes the stream holds after its start."""
    shape, _, dtype, header = _npy_header(stream, what, name)
    if dtype.hasobject or dtype.kind not in kinds:
        raise ScanVizError(f"{what} {name} holds {dtype} values; expected numbers: give the right file")
    n_bytes = math.prod(shape) * dtype.itemsize
    if n_bytes > available - header:
        raise ScanVizError(f"{what} {name} declares {_mb(n_bytes)} of data but holds {_mb(max(available - header, 0))}:"
                           " it is truncated or damaged, write it again")
    if n_bytes > max_bytes:
        raise ScanVizError(f"{what} {name} declares an array of shape {shape} ({_mb(n_bytes)}), over the "
                           f"{_mb(max_bytes)} limit for such a file: give the right file")
    return shape, dtype, n_bytes


def load_npy(path: PathLike, what: str, *, mmap: bool = False, max_bytes: int = MAX_LOAD_BYTES,
             budget: LoadBudget | None = None, kinds: str = "fiub") -> np.ndarray:
    """An .npy file whose header was checked by :func:`check_npy`; read whole (charged to ``budget``) or
    memory-mapped read-only (``mmap``, not charged: the data stays in the page cache)."""
    name = shown(path)
    size = regular_file(path, what)
    try:
        with open(path, "rb") as f:
            # a memory map holds no more than the file: only what the file holds bounds it
            _, _, n_bytes = check_npy(f, size, what, name, max_bytes if not mmap else size, kinds)
    except OSError as exc:
        raise ScanVizError(f"cannot read {what} {name} ({exc.strerror or type(exc).__name__})") from None
    if not mmap:
        budget_or_default(budget).charge(n_bytes, f"{what} {name}")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ScanVizError(f"{what} {name} cannot be read ({type(exc).__name__}): write it again") from None


# ------------------------------------------------------------------------------------------------ zip and .npz
def check_zip(path: PathLike, what: str, max_bytes: int, budget: LoadBudget | None = None,
              max_members: int = MAX_ZIP_MEMBERS) -> list[zipfile.ZipInfo]:
    """The members of the zip archive at ``path`` once their count and declared uncompressed sizes are within the
    caps (and charged to ``budget``); ScanVizError otherwise. Nothing is decompressed.

    The count comes from the end-of-central-directory record, before ``zipfile`` builds an object per member.
    The declared sizes bound what reading can allocate: ``zipfile`` stops a member at its declared size, and
    torch's reader allocates exactly the declared size of each record.
    """
    name = shown(path)
    try:
        with open(path, "rb") as f:
            # zipfile's own reader of that record (ZIP64 included); private, but it has not changed since Python 2
            end = zipfile._EndRecData(f)  # noqa: SLF001
            if end is None:
                raise zipfile.BadZipFile("no end of central directory")
            if end[zipfile._ECD_ENTRIES_TOTAL] > max_members:  # noqa: SLF001
                raise ScanVizError(f"{what} {name} is a zip archive of {end[zipfile._ECD_ENTRIES_TOTAL]:,} files; "  # noqa: SLF001
                                   f"the limit is {max_members:,}: give the right file")
            with zipfile.ZipFile(f) as archive:
                members = archive.infolist()
    except ScanVizError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise ScanVizError(f"{what} {name} is not a zip archive or it is damaged ({type(exc).__name__}): give the "
                           "right file") from None
    if len(members) > max_members:
        raise ScanVizError(f"{what} {name} is a zip archive of {len(members):,} files; the limit is "
                           f"{max_members:,}: give the right file")
    expanded = sum(info.file_size for info in members)
    if expanded > max_bytes:
        raise ScanVizError(f"{what} {name} decompresses to {_mb(expanded)}, over the {_mb(max_bytes)} limit for "
                           "such a file: it is not what it claims to be, give the right file")
    budget_or_default(budget).charge(expanded, f"{what} {name}")
    return members


def read_npz(path: PathLike, what: str, keys: Iterable[str], max_bytes: int = MAX_NPZ_BYTES,
             budget: LoadBudget | None = None) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of the ``.npz`` at ``path``, each header checked (:func:`check_npy` against its member's
    declared size) and the archive's expansion capped by :func:`check_zip` before any array is read.

    A missing key is left out of the result, so the caller can name what is missing.
    """
    name = shown(path)
    regular_file(path, what)
    members = {info.filename: info for info in check_zip(path, what, max_bytes, budget)}
    wanted = [key for key in keys if f"{key}.npy" in members]
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for key in wanted:
                info = members[f"{key}.npy"]
                with archive.open(info) as stream:
                    check_npy(stream, info.file_size, what, f"{name} ({key})", max_bytes)
                with archive.open(info) as stream:
                    out[key] = np.lib.format.read_array(stream, allow_pickle=False)
    except ScanVizError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        # numpy's messages can quote the file's bytes; name only the kind of failure
        raise ScanVizError(f"{what} {name} is not a readable .npz file ({type(exc).__name__}): give the right "
                           "file") from None
    return out


# ------------------------------------------------------------------------------------------------- safetensors
_SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                         "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def check_safetensors(path: PathLike, what: str, max_bytes: int = MAX_LOAD_BYTES, budget: LoadBudget | None = None,
                      max_tensors: int = MAX_TENSORS) -> int:
    """The bytes of tensor data a safetensors file declares, once its header (length from the first 8 bytes,
    little-endian u64), tensor count and every tensor's declared size fit the caps and the file; charged to
    ``budget``. ScanVizError otherwise; nothing is handed to ``safetensors`` before this returns."""
    name = shown(path)
    size = regular_file(path, what)

    def damaged(why: str) -> ScanVizError:
        return ScanVizError(f"{what} {name} is not a valid safetensors file ({why}): write it again")

    try:
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise damaged("shorter than its 8-byte header length")
            header_len = int.from_bytes(prefix, "little")
            if 8 + header_len > size:
                raise damaged("its header runs past the end of the file")
            if header_len > MAX_SAFETENSORS_HEADER_BYTES:
                raise ScanVizError(f"{what} {name} has a {_mb(header_len)} header; the limit is "
                                   f"{_mb(MAX_SAFETENSORS_HEADER_BYTES)} (a model's lists a few hundred tensors in "
                                   "a few KB): give the right file")
            header = f.read(header_len)
    except OSError as exc:
        raise ScanVizError(f"cannot read {what} {name} ({exc.strerror or type(exc).__name__})") from None
    try:
        header = header.decode("utf-8")
    except UnicodeDecodeError:
        raise damaged("its header is not UTF-8") from None
    table = parse_json(header, what, name)
    if not isinstance(table, dict):
        raise damaged("its header is not a JSON object")
    tensors = {key: value for key, value in table.items() if key != "__metadata__"}
    if len(tensors) > max_tensors:
        raise ScanVizError(f"{what} {name} lists {len(tensors):,} tensors; the limit is {max_tensors:,}: give the "
                           "right file")
    data_bytes = size - 8 - header_len
    total = 0
    for n, entry in enumerate(tensors.values(), start=1):
        if not isinstance(entry, dict):
            raise damaged(f"entry {n} of its header is not an object")
        itemsize = _SAFETENSORS_ITEMSIZE.get(entry.get("dtype"))  # type: ignore[arg-type]
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        ok_shape = isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                   for d in shape)
        ok_offsets = (isinstance(offsets, list) and len(offsets) == 2
                      and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                      and 0 <= offsets[0] <= offsets[1] <= data_bytes)
        if itemsize is None or not ok_shape or not ok_offsets:
            raise damaged(f"tensor {n} has an unknown dtype, a bad shape or data outside the file")
        n_bytes = math.prod(shape) * itemsize
        if n_bytes != offsets[1] - offsets[0]:
            raise damaged(f"tensor {n}'s shape does not match its data")
        total += n_bytes
    if total > max_bytes:
        raise ScanVizError(f"{what} {name} holds {_mb(total)} of tensors, over the {_mb(max_bytes)} limit: give the "
                           "right file")
    budget_or_default(budget).charge(total, f"{what} {name}")
    return total


__all__ = [
    "LoadBudget", "OverBudget", "MAX_CHECKPOINT_BYTES", "MAX_FEATURE_DIM", "MAX_JSON_DEPTH", "MAX_JSON_DIGITS", "MAX_LOAD_BYTES",
    "MAX_NPZ_BYTES", "MAX_REGIONS_PER_IMAGE", "MAX_SAFETENSORS_HEADER_BYTES", "MAX_TENSORS", "MAX_TSV_LINE_BYTES",
    "MAX_ZIP_MEMBERS", "budget_or_default", "check_json_text", "check_npy", "check_safetensors", "check_zip",
    "load_npy", "parse_json", "read_json", "read_npz", "shown",
]
