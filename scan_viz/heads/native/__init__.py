"""SCAN's attention as a per-pair C kernel (``scan_pairs.c``), built with the machine's C compiler on first use.

The same library holds the token screen's probe pass and its code scoring (``token_probe.c``, called by
:meth:`scan_viz.retrieval.tokens.TokenIndex.probe_scores` and ``code_scores``) and the element-wise part of the
training GRU's time step (``gru_cell.c``, called by :mod:`scan_viz.model.gru`), so one build, one cache and one off
switch serve all three.

Two layouts of a block's cosines: uniform, (C, k, Q, n), every query set padded to n items; or ragged
(:class:`Ragged`), (C, k, width) with the query sets packed one after the other, each pair's tile sized to its own
set. Training uses the ragged one for t2i (:func:`scan_viz.heads.attention_pairs.ragged_pair_inputs`): a batch's
captions of any lengths are one block, with no padded word in its matrix products.

Why C: on a CPU, SCAN's attention is about twenty element-wise passes over (images x regions x captions x words)
tensors between two matrix products, and each pass streams the whole tensor through memory. The kernel walks the
pairs instead: one pair's (k x n) tile of cosines and all of its intermediates stay in a few KB, so the cosines
are read once and the gradient written once. ``torch.compile`` of the same element-wise steps was measured too
(``benchmarks/bench_training.py`` history in docs/speed.md): it fuses less, because the steps reduce over two
different axes of the tile.

The arithmetic is the one of :func:`scan_viz.heads.attention.scan_attention` and of the hand-written backward in
:mod:`scan_viz.heads.attention_grad`; ``tests/heads/test_native.py`` checks both against them (float32 and float64)
and the backward with ``torch.autograd.gradcheck``. Deliberate difference: the compiler may reorder sums
(``-fassociative-math``), so float32 results differ from the tensor code by rounding (measured: <= 1e-6 on scores,
<= 3e-6 relative on gradients).

Built once per source/flags/CPU into ``$SCAN_VIZ_NATIVE_DIR`` (default ``~/.cache/scan-viz/native``), written
atomically. Without a compiler, or with ``SCAN_VIZ_NATIVE=0``, :func:`library` returns None and every caller
uses the tensor code.

Threads: built with ``-fopenmp`` (when the compiler takes it), a call splits its pairs over the calling thread's
OpenMP team, up to ``torch.get_num_threads()`` threads. The library links ``libgomp.so.1`` by that name, and torch
has already loaded its own copy under it, so the kernel runs on torch's worker threads. An earlier split over
Python threads measured no faster on 2 cores: torch's OpenMP workers keep spinning for a while after each matrix
product, so a second set of threads competed with them (AVX2 machine, d = 1,024, 36 x 13 tiles: 2.9 us/pair on one
thread, 3.0 split over two; 1.6 with ``OMP_WAIT_POLICY=PASSIVE``, which the library must not set for its caller).
Without ``-fopenmp`` the kernel runs on the calling thread.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

__all__ = ["AGGREGATIONS", "NORMS", "Ragged", "disabled", "gru_cell_backward", "gru_cell_forward", "library",
           "listed_pairs_backward", "pairs_backward", "pairs_forward",
           "pairs_forward_direct", "pairs_forward_direct_half", "status", "threads", "token_code_best",
           "token_probe_scores", "usable"]

HERE = Path(__file__).resolve().parent
SOURCES = ("scan_pairs_all.c", "scan_pairs.c", "gru_cell.c", "token_probe.c")
#: the raw-feature normalisations the kernel implements, by their code in scan_pairs.c
NORMS = {"l2norm": 0, "clipped_l2norm": 1}
#: the aggregations, by their code in scan_pairs.c
AGGREGATIONS = {"LogSumExp": 0, "Mean": 1, "Max": 2, "Sum": 3}
#: -ffast-math's parts that let the compiler vectorise sums and calls to exp, and no more: not -ffast-math itself,
#: whose startup code would switch the whole process (torch included) to flushing subnormal floats to zero, and
#: not -ffinite-math-only (the kernel relies on IEEE infinities)
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros",
         "-freciprocal-math", "-fopenmp-simd", "-fno-tree-loop-distribute-patterns", "-Wno-psabi", "-shared", "-fPIC")
#: largest k and n a tile may have (scan_pairs.c's MAXK / MAXN)
MAX_ITEMS = 1024

_lock = threading.Lock()
_state: dict[str, object] = {}


def _cpu_key() -> str:
    """What a -march=native build depends on: the machine and its CPU's feature flags."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    return platform.machine() + flags


def _build_dir() -> Path:
    root = os.environ.get("SCAN_VIZ_NATIVE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "scan-viz" / "native"


def _compile(out: Path) -> str | None:
    """Compile into ``out`` (atomically); returns None or the reason it failed."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return "no C compiler found"
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    base = [*FLAGS, "-o", tmp, str(HERE / SOURCES[0])]
    # OpenMP threads and glibc's vector maths when the toolchain has them, each dropped in turn when it does not
    attempts = ([*base, "-fopenmp", "-lmvec", "-lm"], [*base, "-fopenmp", "-DSCAN_NO_MVEC", "-lm"],
                [*base, "-lmvec", "-lm"], [*base, "-DSCAN_NO_MVEC", "-lm"])
    error = ""
    try:
        for args in attempts:
            done = subprocess.run([compiler, *args], capture_output=True, text=True, timeout=120,
                                  check=False)
            if done.returncode == 0:
                os.replace(tmp, out)
                return None
            error = (done.stderr.strip().splitlines() or ["compiler failed"])[-1]
        return f"compiling scan_pairs.c failed: {error}"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"compiling scan_pairs.c failed: {exc}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i = ctypes.c_void_p, ctypes.c_int
    for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        forward = getattr(lib, f"scan_pairs_forward_{suffix}")
        ragged = [p, p, ctypes.c_long]  # query sets' offsets, lengths, row width (NULL, NULL, 0: uniform)
        forward.argtypes = [p] * 6 + [i] * 6 + [real, real] + ragged
        forward.restype = i
        backward = getattr(lib, f"scan_pairs_backward_{suffix}")
        backward.argtypes = [p] * 9 + [i] * 6 + [real, real] + ragged
        backward.restype = i
        direct = getattr(lib, f"scan_pairs_forward_direct_{suffix}")
        direct.argtypes = [p] * 6 + [i] * 6 + [real, real]
        direct.restype = i
        listed = getattr(lib, f"scan_pairs_backward_list_{suffix}")
        listed.argtypes = [p] * 11 + [i] * 6 + [real, real] + ragged
        listed.restype = i
        cell = getattr(lib, f"gru_cell_forward_{suffix}")
        cell.argtypes = [p] * 5 + [ctypes.c_long] * 2
        cell.restype = None
        cell = getattr(lib, f"gru_cell_backward_{suffix}")
        cell.argtypes = [p] * 7 + [ctypes.c_long] * 2
        cell.restype = None
    half = getattr(lib, "scan_pairs_forward_direct_half_f32", None)  # absent where the compiler has no _Float16
    if half is not None:
        half.argtypes = [p] * 7 + [i] * 6 + [ctypes.c_float] * 2
        half.restype = i
        gram = lib.scan_pairs_forward_direct_half_gram_f32
        gram.argtypes = [p] * 8 + [i] * 6 + [ctypes.c_float] * 2
        gram.restype = i
    lib.scan_pairs_threads.argtypes = []
    lib.scan_pairs_threads.restype = ctypes.c_int
    lib.token_probe_scores.argtypes = [p] * 4 + [ctypes.c_int64] * 3 + [p] * 2
    lib.token_probe_scores.restype = None
    lib.token_code_best.argtypes = [p, ctypes.c_int64, p, p, ctypes.c_int64, ctypes.c_int64, p, ctypes.c_int64, p, p,
                                    ctypes.c_int64, p]
    lib.token_code_best.restype = i
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernel, building it on first use; None when it is switched off or cannot be built."""
    with _lock:
        if "lib" in _state:
            return _state["lib"]  # type: ignore[return-value]
        lib, reason = None, None
        if os.environ.get("SCAN_VIZ_NATIVE", "1") == "0":
            reason = "switched off (SCAN_VIZ_NATIVE=0)"
        else:
            digest = hashlib.sha256()
            for name in SOURCES:
                digest.update((HERE / name).read_bytes())
            digest.update(" ".join(FLAGS).encode())
            digest.update(_cpu_key().encode())
            path = _build_dir() / f"scan_pairs-{digest.hexdigest()[:16]}.so"
            if not path.exists():
                reason = _compile(path)
            if reason is None:
                try:
                    lib = _bind(ctypes.CDLL(str(path)))
                except (OSError, AttributeError) as exc:
                    reason = f"loading the compiled kernel failed: {exc}"
        _state["lib"], _state["reason"] = lib, reason
        return lib


@contextlib.contextmanager
def disabled():
    """Within the block every caller takes the tensor code, as with ``SCAN_VIZ_NATIVE=0`` (benchmarks and tests
    compare the two paths in one process)."""
    library()
    with _lock:
        saved = _state["lib"]
        _state["lib"] = None
    try:
        yield
    finally:
        with _lock:
            _state["lib"] = saved


def status() -> str:
    """One line: whether the kernel is in use, and if not, why."""
    return "C kernel in use" if library() is not None else f"tensor code ({_state.get('reason')})"


def threads() -> int:
    """How many OpenMP threads a call of the kernel may use from this thread (``torch.set_num_threads`` sets it):
    0 when the kernel was built without OpenMP or is not in use."""
    lib = library()
    return 0 if lib is None else int(lib.scan_pairs_threads())


def usable(norm: str, tensor: torch.Tensor, n_context: int, n_query: int) -> bool:
    """Whether the kernel computes this case: a CPU float32/float64 tensor, a normalisation it implements."""
    return (norm in NORMS and tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64)
            and 0 < n_context <= MAX_ITEMS and 0 < n_query <= MAX_ITEMS and library() is not None)


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _run(code: int) -> None:
    if code:
        raise ValueError("scan_pairs: a tile is larger than the kernel's limit or memory ran out")


def _check(*tensors: torch.Tensor) -> None:
    dtype = tensors[0].dtype
    for t in tensors:
        if not t.is_contiguous() or t.dtype != dtype or t.device.type != "cpu":
            raise ValueError("scan_pairs: inputs must be contiguous CPU tensors of one dtype")


@dataclasses.dataclass(frozen=True)
class Ragged:
    """Query sets packed one after the other without padding: set q's items are ``[offsets[q], offsets[q] +
    lengths[q])`` of a row of ``width`` items; ``longest`` is the largest length (the kernel's tile size)."""

    offsets: torch.Tensor  # (Q,) int64
    lengths: torch.Tensor  # (Q,) int32
    width: int
    longest: int

    @classmethod
    def of(cls, lengths: torch.Tensor) -> Ragged:
        lengths = lengths.detach().cpu().to(torch.int64)
        ends = torch.cumsum(lengths, 0)
        return cls((ends - lengths).contiguous(), lengths.to(torch.int32).contiguous(), int(ends[-1]),
                   int(lengths.max()))


def _shape(sims: torch.Tensor, ragged: Ragged | None) -> tuple[int, int, int, int, tuple]:
    """(C, k, Q, n) of a block and the kernel's ragged arguments: sims (C, k, Q, n), or (C, k, width) ragged."""
    if ragged is None:
        return (*sims.shape, (None, None, 0))
    n_ctx, k, width = sims.shape
    if width != ragged.width:
        raise ValueError("scan_pairs: the ragged layout does not match the cosines")
    return n_ctx, k, int(ragged.lengths.numel()), ragged.longest, (_ptr(ragged.offsets), _ptr(ragged.lengths), width)


def pairs_forward(sims: torch.Tensor, gram: torch.Tensor, qnorm: torch.Tensor, qvalid: torch.Tensor,
                  cvalid: torch.Tensor, norm: str, agg: str, lam: float, lse: float,
                  ragged: Ragged | None = None) -> torch.Tensor:
    """(C, Q) scores of every pair: sims (C, k, Q, n), gram (C, k, k), qnorm / qvalid (Q, n), cvalid (C, k); or with
    ``ragged``, sims (C, k, width) and qnorm / qvalid (width,)."""
    lib = library()
    _check(sims, gram, qnorm, qvalid, cvalid)
    n_ctx, k, n_q, n, tail = _shape(sims, ragged)
    scores = torch.empty(n_ctx, n_q, dtype=sims.dtype)
    fn = lib.scan_pairs_forward_f32 if sims.dtype == torch.float32 else lib.scan_pairs_forward_f64
    _run(fn(_ptr(sims), _ptr(gram), _ptr(qnorm), _ptr(qvalid), _ptr(cvalid), _ptr(scores), n_ctx, k, n_q, n,
            NORMS[norm], AGGREGATIONS[agg], lam, lse, *tail))
    return scores


def pairs_forward_direct(context: torch.Tensor, query: torch.Tensor, qnorm: torch.Tensor, qvalid: torch.Tensor,
                         cvalid: torch.Tensor, norm: str, agg: str, lam: float, lse: float) -> torch.Tensor:
    """(C,) scores of ONE query set against C context sets, from the embeddings (no cosines or Gram matrices
    computed first; see ``scan_pairs_forward_direct`` in scan_pairs.c): context (C, k, d) and query (n, d) with
    padding zeroed, qnorm / qvalid (n,), cvalid (C, k)."""
    lib = library()
    _check(context, query, qnorm, qvalid, cvalid)
    n_ctx, k, dim = context.shape
    n = query.shape[0]
    if query.shape[1] != dim or qnorm.shape != (n,) or qvalid.shape != (n,) or cvalid.shape != (n_ctx, k):
        raise ValueError("scan_pairs_direct: shapes do not match")
    scores = torch.empty(n_ctx, dtype=context.dtype)
    fn = lib.scan_pairs_forward_direct_f32 if context.dtype == torch.float32 else lib.scan_pairs_forward_direct_f64
    _run(fn(_ptr(context), _ptr(query), _ptr(qnorm), _ptr(qvalid), _ptr(cvalid), _ptr(scores), n_ctx, k, n, dim,
            NORMS[norm], AGGREGATIONS[agg], lam, lse))
    return scores


def _address(table, dtype: torch.dtype, what: str) -> int:
    """The data address of a contiguous CPU tensor or C-ordered array of ``dtype``."""
    import numpy as np

    if torch.is_tensor(table):
        if table.dtype != dtype or table.device.type != "cpu" or not table.is_contiguous():
            raise ValueError(f"scan_pairs_direct_half: {what} must be a contiguous CPU {dtype} tensor")
        return table.data_ptr()
    if table.dtype != {torch.float16: np.float16, torch.float32: np.float32}[dtype] or not table.flags.c_contiguous:
        raise ValueError(f"scan_pairs_direct_half: {what} must be a C-ordered {dtype} array")
    return table.ctypes.data


def pairs_forward_direct_half(table, rows, query: torch.Tensor, qnorm: torch.Tensor, qvalid: torch.Tensor,
                              cvalid: torch.Tensor, norm: str, agg: str, lam: float, lse: float,
                              gram=None) -> torch.Tensor | None:
    """:func:`pairs_forward_direct` with the context sets in float16, scored where they lie: ``table`` (N, k, d)
    float16 (a C-ordered array or CPU tensor, e.g. a search's candidate rows as read from the gallery's file, or a
    gallery held in memory), ``rows`` (C,) the sets of ``table`` to score; query (n, d) float32, qnorm / qvalid (n,),
    cvalid (C, k) of the listed sets (the kernel zeroes their invalid regions as it widens them). ``gram``: optional
    (N, k, k) float32, each set's Gram matrix (of its rows as widened, invalid regions zeroed), which replaces the
    product of the attention with the regions (``scan_pairs_forward_direct_half_gram``). (C,) float32 scores, or None
    when the library has no float16 entry point (a compiler without ``_Float16``)."""
    import numpy as np

    lib = library()
    name = "scan_pairs_forward_direct_half_f32" if gram is None else "scan_pairs_forward_direct_half_gram_f32"
    fn = None if lib is None else getattr(lib, name, None)
    if fn is None:
        return None
    address = _address(table, torch.float16, "the table")
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    _check(query, qnorm, qvalid, cvalid)
    if query.dtype != torch.float32 or table.ndim != 3:
        raise ValueError("scan_pairs_direct_half: float32 words and an (N, k, d) table")
    n_all, k, dim = table.shape
    n_ctx, n = len(rows), query.shape[0]
    if query.shape[1] != dim or qnorm.shape != (n,) or qvalid.shape != (n,) or cvalid.shape != (n_ctx, k):
        raise ValueError("scan_pairs_direct_half: shapes do not match")
    if gram is not None and tuple(gram.shape) != (n_all, k, k):
        raise ValueError("scan_pairs_direct_half: the Gram matrices do not match the table")
    if rows.size and (rows.min() < 0 or rows.max() >= n_all):
        raise ValueError("scan_pairs_direct_half: a row is outside the table")
    scores = torch.empty(n_ctx, dtype=torch.float32)
    if n_ctx:
        tail = (_ptr(query), _ptr(qnorm), _ptr(qvalid), _ptr(cvalid), _ptr(scores), n_ctx, k, n, dim, NORMS[norm],
                AGGREGATIONS[agg], lam, lse)
        if gram is None:
            _run(fn(address, rows.ctypes.data, *tail))
        else:
            _run(fn(address, rows.ctypes.data, _address(gram, torch.float32, "the Gram matrices"), *tail))
    return scores


def pairs_backward(sims: torch.Tensor, gram: torch.Tensor, qnorm: torch.Tensor, qvalid: torch.Tensor,
                   cvalid: torch.Tensor, grad: torch.Tensor, norm: str, agg: str, lam: float,
                   lse: float, ragged: Ragged | None = None,
                   out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``sum(grad * scores)`` w.r.t. sims (C, k, Q, n), gram (C, k, k) and qnorm (Q, n) (or, with
    ``ragged``, sims (C, k, width) and qnorm (width,)). ``out``: where the gradient of sims goes; it may be ``sims``
    itself, whose cosines are then gone.

    Pairs whose ``grad`` is exactly 0 are skipped (their gradient is 0: every term is linear in it), which is
    most pairs under the hardest-negative loss.
    """
    lib = library()
    grad = grad.contiguous()
    _check(sims, gram, qnorm, qvalid, cvalid, grad)
    n_ctx, k, n_q, n, tail = _shape(sims, ragged)
    g_sims = torch.empty_like(sims) if out is None else out
    _check(sims, g_sims)
    if g_sims.shape != sims.shape:
        raise ValueError("scan_pairs: the gradient's buffer does not match the cosines")
    g_gram = torch.zeros_like(gram)
    g_qnorm = torch.zeros_like(qnorm)
    fn = lib.scan_pairs_backward_f32 if sims.dtype == torch.float32 else lib.scan_pairs_backward_f64
    _run(fn(_ptr(sims), _ptr(gram), _ptr(qnorm), _ptr(qvalid), _ptr(cvalid), _ptr(grad), _ptr(g_sims),
            _ptr(g_gram), _ptr(g_qnorm), n_ctx, k, n_q, n, NORMS[norm], AGGREGATIONS[agg], lam, lse, *tail))
    return g_sims, g_gram, g_qnorm


def listed_pairs_backward(sims: torch.Tensor, gram: torch.Tensor, qnorm: torch.Tensor, qvalid: torch.Tensor,
                          cvalid: torch.Tensor, pair_c: torch.Tensor, pair_q: torch.Tensor, grad: torch.Tensor,
                          norm: str, agg: str, lam: float, lse: float,
                          ragged: Ragged | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`pairs_backward` for the listed pairs only (``pair_c`` sorted, int64; ``grad`` their gradients): the
    gradient tiles (P, k, n) of those pairs' cosines, and the gradients of gram (C, k, k) and qnorm (Q, n). With
    ``ragged``, n is the longest set and a tile's columns past its set's length are 0."""
    lib = library()
    pair_c, pair_q, grad = pair_c.contiguous(), pair_q.contiguous(), grad.contiguous()
    _check(sims, gram, qnorm, qvalid, cvalid, grad)
    n_ctx, k, n_q, n, tail = _shape(sims, ragged)
    n_pairs = int(pair_c.numel())
    tiles = torch.empty(n_pairs, k, n, dtype=sims.dtype)
    g_gram = torch.zeros_like(gram)
    g_qnorm = torch.zeros_like(qnorm)
    if n_pairs:
        fn = lib.scan_pairs_backward_list_f32 if sims.dtype == torch.float32 else lib.scan_pairs_backward_list_f64
        _run(fn(_ptr(sims), _ptr(gram), _ptr(qnorm), _ptr(qvalid), _ptr(cvalid), _ptr(pair_c), _ptr(pair_q),
                _ptr(grad), _ptr(tiles), _ptr(g_gram), _ptr(g_qnorm), n_pairs, k, n_q, n, NORMS[norm],
                AGGREGATIONS[agg], lam, lse, *tail))
    return tiles, g_gram, g_qnorm


def gru_cell_forward(gi: torch.Tensor, gates: torch.Tensor, hp: torch.Tensor, news: torch.Tensor,
                     out: torch.Tensor) -> None:
    """One GRU step's element-wise forward (gru_cell.c): gi, gates (b, 3h), hp (b, h) -> gates' first two thirds
    become r and z, news and out (b, h) are written. Contiguous CPU tensors of one dtype, float32 or float64."""
    _check(gi, gates, hp, news, out)
    b, h = hp.shape
    if gi.shape != (b, 3 * h) or gates.shape != (b, 3 * h) or news.shape != (b, h) or out.shape != (b, h):
        raise ValueError("gru_cell: shapes do not match")
    lib = library()
    fn = lib.gru_cell_forward_f32 if hp.dtype == torch.float32 else lib.gru_cell_forward_f64
    fn(_ptr(gi), _ptr(gates), _ptr(hp), _ptr(news), _ptr(out), b, h)


def gru_cell_backward(g_out: torch.Tensor, g_h: torch.Tensor, gates: torch.Tensor, news: torch.Tensor,
                      hp: torch.Tensor, g_gi: torch.Tensor, g_gh: torch.Tensor) -> None:
    """One GRU step's element-wise backward (gru_cell.c): writes g_gi and g_gh (b, 3h) and replaces g_h (b, h) by
    the direct part of the gradient into hp (the caller adds ``g_gh @ W_hh``)."""
    _check(g_out, g_h, gates, news, hp, g_gi, g_gh)
    b, h = hp.shape
    if (g_out.shape != (b, h) or g_h.shape != (b, h) or news.shape != (b, h) or gates.shape != (b, 3 * h)
            or g_gi.shape != (b, 3 * h) or g_gh.shape != (b, 3 * h)):
        raise ValueError("gru_cell: shapes do not match")
    lib = library()
    fn = lib.gru_cell_backward_f32 if hp.dtype == torch.float32 else lib.gru_cell_backward_f64
    fn(_ptr(g_out), _ptr(g_h), _ptr(gates), _ptr(news), _ptr(hp), _ptr(g_gi), _ptr(g_gh), b, h)


def token_probe_scores(offsets, images, centroids, weights, n_images: int):
    """The token screen's probe pass (``token_probe.c``; :meth:`scan_viz.retrieval.tokens.TokenIndex.probe_scores`
    is the caller and holds the tensor-code version): (n_images,) float64 sums of each word's weight at the first
    (best) probed centroid whose list holds the image, or None when the kernel is not in use.

    offsets (C + 1,) int64, images int32: the inverted lists; centroids (n_words, probe) int64, each word's best
    first; weights (n_words, probe) float64. The lists' offsets must rise and their image rows lie in
    [0, n_images) and rise within each list (threads split the lists by binary search): what
    :func:`scan_viz.retrieval.tokens.load_token_index` checks once per index (a per-query check would read the whole
    lists again).
    """
    import numpy as np

    lib = library()
    if lib is None:
        return None
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    images = np.ascontiguousarray(images, dtype=np.int32)
    centroids = np.ascontiguousarray(centroids, dtype=np.int64)
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    if centroids.shape != weights.shape or centroids.ndim != 2:
        raise ValueError("token_probe_scores: centroids and weights must both be (n_words, probe)")
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[-1] != len(images):
        raise ValueError("token_probe_scores: the list offsets do not end at the lists' length")
    if centroids.size and (centroids.min() < 0 or centroids.max() >= len(offsets) - 1):
        raise ValueError("token_probe_scores: a centroid is outside the inverted lists")
    out = np.zeros(n_images, dtype=np.float64)
    bits = np.empty((n_images + 63) // 64, dtype=np.uint64)  # cleared by the kernel, per word
    lib.token_probe_scores(offsets.ctypes.data, images.ctypes.data, centroids.ctypes.data, weights.ctypes.data,
                           centroids.shape[0], centroids.shape[1], n_images, bits.ctypes.data, out.ctypes.data)
    return out


def token_code_best(rows, codes, residuals, table: torch.Tensor, n_centroids: int, basis_w: torch.Tensor,
                    mean_w: torch.Tensor):
    """The token screen's code scoring with int8 residuals (``token_code_best`` in ``token_probe.c``;
    :meth:`scan_viz.retrieval.tokens.TokenIndex.code_scores` is the caller and holds the tensor code): (N, L) float32,
    each listed image's best (centroid + residual) cosine per word over its real regions, or None when the kernel is
    not in use.

    rows (N,) int64 image rows; codes (n_images, n_reg) uint16, codes >= ``n_centroids`` are padding; residuals
    (n_images, n_reg, r) int8; table (>= n_centroids, L) float32 word-centroid cosines; basis_w (r, L) float32;
    mean_w (L,) float32. Rows must lie in [0, n_images). The words are padded here to a multiple of 8 lanes.
    """
    import numpy as np

    lib = library()
    if lib is None:
        return None
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    codes = np.ascontiguousarray(codes)
    residuals = np.ascontiguousarray(residuals)
    if codes.dtype != np.uint16 or residuals.dtype != np.int8 or residuals.shape[:2] != codes.shape:
        raise ValueError("token_code_best: codes must be (n_images, n_reg) uint16 and residuals (n_images, n_reg, r) "
                         "int8")
    n_words = int(mean_w.shape[0])
    lanes = -(-n_words // 8) * 8
    if not 1 <= n_words <= MAX_ITEMS or residuals.shape[2] > MAX_ITEMS:  # token_probe.c's TOKEN_MAX_LANES / _R
        return None
    if (table.ndim != 2 or table.shape[1] != n_words or table.shape[0] < n_centroids
            or tuple(basis_w.shape) != (residuals.shape[2], n_words)):
        raise ValueError("token_code_best: table, basis_w and mean_w do not match")
    if rows.size and (rows.min() < 0 or rows.max() >= len(codes)):
        raise ValueError("token_code_best: a row is outside the index")

    def padded(t: torch.Tensor) -> torch.Tensor:  # words along the last axis, zero lanes up to a multiple of 8
        return torch.nn.functional.pad(t.detach().to(torch.float32), (0, lanes - n_words)).contiguous()

    table, basis_w, mean_w = padded(table[:n_centroids]), padded(basis_w), padded(mean_w)
    out = torch.empty(len(rows), lanes, dtype=torch.float32)
    if len(rows):
        _run(lib.token_code_best(rows.ctypes.data, len(rows), codes.ctypes.data, residuals.ctypes.data,
                                 codes.shape[1], residuals.shape[2], _ptr(table), int(n_centroids), _ptr(basis_w),
                                 _ptr(mean_w), lanes, _ptr(out)))
    return out[:, :n_words]
