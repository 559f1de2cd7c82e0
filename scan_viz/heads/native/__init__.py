"""SCAN's attention as a per-pair C kernel (``scan_pairs.c``), built with the machine's C compiler on first use.

The same library holds the token screen's probe pass (``token_probe.c``, called by
:meth:`scan_viz.retrieval.tokens.TokenIndex.probe_scores`), so one build, one cache and one off switch serve both.

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
uses the tensor code. The kernel runs on one thread: the matrix products around it use torch's threads, and
splitting the kernel's pairs over a second thread (ctypes releases the GIL) measured no faster with 2 threads
(scoring d = 1024: 166-168K pairs/s split, 174-191K on one thread; torch's OpenMP workers keep spinning after each
matrix product).
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

__all__ = ["AGGREGATIONS", "NORMS", "disabled", "library", "listed_pairs_backward", "pairs_backward", "pairs_forward",
           "status", "token_probe_scores", "usable"]

HERE = Path(__file__).resolve().parent
SOURCES = ("scan_pairs_all.c", "scan_pairs.c", "token_probe.c")
#: the raw-feature normalisations the kernel implements, by their code in scan_pairs.c
NORMS = {"l2norm": 0, "clipped_l2norm": 1}
#: the aggregations, by their code in scan_pairs.c
AGGREGATIONS = {"LogSumExp": 0, "Mean": 1, "Max": 2, "Sum": 3}
#: -ffast-math's parts that let the compiler vectorise sums and calls to exp, and no more: not -ffast-math itself,
#: whose startup code would switch the whole process (torch included) to flushing subnormal floats to zero, and
#: not -ffinite-math-only (the kernel relies on IEEE infinities)
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros",
         "-freciprocal-math", "-fopenmp-simd", "-Wno-psabi", "-shared", "-fPIC")
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
    attempts = ([*FLAGS, "-o", tmp, str(HERE / SOURCES[0]), "-lmvec", "-lm"],
                [*FLAGS, "-DSCAN_NO_MVEC", "-o", tmp, str(HERE / SOURCES[0]), "-lm"])
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
        forward.argtypes = [p] * 6 + [i] * 6 + [real, real]
        forward.restype = i
        backward = getattr(lib, f"scan_pairs_backward_{suffix}")
        backward.argtypes = [p] * 9 + [i] * 6 + [real, real]
        backward.restype = i
        listed = getattr(lib, f"scan_pairs_backward_list_{suffix}")
        listed.argtypes = [p] * 11 + [i] * 6 + [real, real]
        listed.restype = i
    lib.token_probe_scores.argtypes = [p] * 4 + [ctypes.c_int64] * 2 + [p] * 2
    lib.token_probe_scores.restype = None
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


def usable(norm: str, tensor: torch.Tensor, n_context: int, n_query: int) -> bool:
    """Whether the kernel computes this case: a CPU float32/float64 tensor, a normalisation it implements."""
    return (norm in NORMS and tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64)
            and 0 < n_context <= MAX_ITEMS and 0 < n_query <= MAX_ITEMS and library() is not None)


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _chunks(n: int) -> list[tuple[int, int]]:
    """The context sets one call of the kernel takes: all of them (see the module doc: one thread)."""
    return [(0, n)] if n > 0 else []


def _run(calls) -> None:
    codes = [call() for call in calls]
    if any(codes):
        raise ValueError("scan_pairs: a tile is larger than the kernel's limit or memory ran out")


def _check(*tensors: torch.Tensor) -> None:
    dtype = tensors[0].dtype
    for t in tensors:
        if not t.is_contiguous() or t.dtype != dtype or t.device.type != "cpu":
            raise ValueError("scan_pairs: inputs must be contiguous CPU tensors of one dtype")


def pairs_forward(sims: torch.Tensor, gram: torch.Tensor, qnorm: torch.Tensor, qvalid: torch.Tensor,
                  cvalid: torch.Tensor, norm: str, agg: str, lam: float, lse: float) -> torch.Tensor:
    """(C, Q) scores of every pair: sims (C, k, Q, n), gram (C, k, k), qnorm / qvalid (Q, n), cvalid (C, k)."""
    lib = library()
    _check(sims, gram, qnorm, qvalid, cvalid)
    n_ctx, k, n_q, n = sims.shape
    scores = torch.empty(n_ctx, n_q, dtype=sims.dtype)
    fn = lib.scan_pairs_forward_f32 if sims.dtype == torch.float32 else lib.scan_pairs_forward_f64
    calls = [lambda a=a, b=b: fn(_ptr(sims[a:b]), _ptr(gram[a:b]), _ptr(qnorm), _ptr(qvalid), _ptr(cvalid[a:b]),
                                 _ptr(scores[a:b]), b - a, k, n_q, n, NORMS[norm], AGGREGATIONS[agg], lam, lse)
             for a, b in _chunks(n_ctx)]
    _run(calls)
    return scores


def pairs_backward(sims: torch.Tensor, gram: torch.Tensor, qnorm: torch.Tensor, qvalid: torch.Tensor,
                   cvalid: torch.Tensor, grad: torch.Tensor, norm: str, agg: str, lam: float,
                   lse: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``sum(grad * scores)`` w.r.t. sims (C, k, Q, n), gram (C, k, k) and qnorm (Q, n).

    Pairs whose ``grad`` is exactly 0 are skipped (their gradient is 0: every term is linear in it), which is
    most pairs under the hardest-negative loss.
    """
    lib = library()
    grad = grad.contiguous()
    _check(sims, gram, qnorm, qvalid, cvalid, grad)
    n_ctx, k, n_q, n = sims.shape
    g_sims = torch.empty_like(sims)
    g_gram = torch.zeros_like(gram)
    parts = _chunks(n_ctx)
    g_qnorm = torch.zeros(len(parts), n_q, n, dtype=sims.dtype)
    fn = lib.scan_pairs_backward_f32 if sims.dtype == torch.float32 else lib.scan_pairs_backward_f64
    calls = [lambda a=a, b=b, i=i: fn(_ptr(sims[a:b]), _ptr(gram[a:b]), _ptr(qnorm), _ptr(qvalid),
                                      _ptr(cvalid[a:b]), _ptr(grad[a:b]), _ptr(g_sims[a:b]), _ptr(g_gram[a:b]),
                                      _ptr(g_qnorm[i]), b - a, k, n_q, n, NORMS[norm], AGGREGATIONS[agg], lam, lse)
             for i, (a, b) in enumerate(parts)]
    _run(calls)
    return g_sims, g_gram, g_qnorm.sum(dim=0)


def listed_pairs_backward(sims: torch.Tensor, gram: torch.Tensor, qnorm: torch.Tensor, qvalid: torch.Tensor,
                          cvalid: torch.Tensor, pair_c: torch.Tensor, pair_q: torch.Tensor, grad: torch.Tensor,
                          norm: str, agg: str, lam: float,
                          lse: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`pairs_backward` for the listed pairs only (``pair_c`` sorted, int64; ``grad`` their gradients): the
    gradient tiles (P, k, n) of those pairs' cosines, and the gradients of gram (C, k, k) and qnorm (Q, n)."""
    lib = library()
    pair_c, pair_q, grad = pair_c.contiguous(), pair_q.contiguous(), grad.contiguous()
    _check(sims, gram, qnorm, qvalid, cvalid, grad)
    n_ctx, k, n_q, n = sims.shape
    n_pairs = int(pair_c.numel())
    tiles = torch.empty(n_pairs, k, n, dtype=sims.dtype)
    g_gram = torch.zeros_like(gram)
    # threads take whole context sets (a set's Gram gradient is written by one thread)
    bounds = [0]
    for a, b in _chunks(n_ctx)[:-1]:
        bounds.append(int(torch.searchsorted(pair_c, b)))
    bounds.append(n_pairs)
    parts = [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
    g_qnorm = torch.zeros(max(1, len(parts)), n_q, n, dtype=sims.dtype)
    fn = lib.scan_pairs_backward_list_f32 if sims.dtype == torch.float32 else lib.scan_pairs_backward_list_f64
    calls = [lambda a=a, b=b, i=i: fn(_ptr(sims), _ptr(gram), _ptr(qnorm), _ptr(qvalid), _ptr(cvalid),
                                      _ptr(pair_c[a:b]), _ptr(pair_q[a:b]), _ptr(grad[a:b]), _ptr(tiles[a:b]),
                                      _ptr(g_gram), _ptr(g_qnorm[i]), b - a, k, n_q, n, NORMS[norm],
                                      AGGREGATIONS[agg], lam, lse)
             for i, (a, b) in enumerate(parts)]
    if calls:
        _run(calls)
    return tiles, g_gram, g_qnorm.sum(dim=0)


def token_probe_scores(offsets, images, centroids, weights, n_images: int):
    """The token screen's probe pass (``token_probe.c``; :meth:`scan_viz.retrieval.tokens.TokenIndex.probe_scores`
    is the caller and holds the tensor-code version): (n_images,) float64 sums of each word's weight at the first
    (best) probed centroid whose list holds the image, or None when the kernel is not in use.

    offsets (C + 1,) int64, images int32: the inverted lists; centroids (n_words, probe) int64, each word's best
    first; weights (n_words, probe) float64. The lists' offsets must rise and their image rows lie in
    [0, n_images): what :func:`scan_viz.retrieval.tokens.load_token_index` checks once per index (a per-query check
    would read the whole lists again).
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
    stamp = np.zeros(n_images, dtype=np.int32)
    lib.token_probe_scores(offsets.ctypes.data, images.ctypes.data, centroids.ctypes.data, weights.ctypes.data,
                           centroids.shape[0], centroids.shape[1], stamp.ctypes.data, out.ctypes.data)
    return out
