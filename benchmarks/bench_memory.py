"""Peak memory of scoring a big gallery: n_images x n_captions with 36 x 2048 features and d=1024.

The default is COCO 5K's size, 5,000 images x 25,000 captions (125M pairs; with ``--dtype bfloat16`` it took
13 minutes on this project's 2-core CPU). Features are read from a memory-mapped .npy, as `scan-viz score` does.
Prints the wall and CPU time, the peak resident memory and the parts that dominate it.

    python benchmarks/bench_memory.py [--images 5000 --captions 25000] [--dtype float32|float64|bfloat16]
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scoring import WORDS, captions  # noqa: E402

from scan_viz.model import ScanModel  # noqa: E402
from scan_viz.model.config import ScanConfig  # noqa: E402
from scan_viz.text import Vocabulary  # noqa: E402


def cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--captions", type=int, default=25000)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    vocab = Vocabulary.from_words(WORDS)
    model = ScanModel(ScanConfig(vocab_size=len(vocab)), vocab)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ims.npy"
        feats = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(args.images, 36, 2048))
        for start in range(0, args.images, 500):
            feats[start:start + 500] = rng.standard_normal((min(500, args.images - start), 36, 2048),
                                                           dtype=np.float32)
        feats.flush()
        del feats
        caps = captions(args.captions, rng)
        before = peak_rss_gib()
        t, cpu = time.perf_counter(), cpu_seconds()
        sims = model.similarity(np.load(path, mmap_mode="r"), caps, dtype=args.dtype)
        elapsed, cpu = time.perf_counter() - t, cpu_seconds() - cpu
    item = 8 if args.dtype == "float64" else 4
    print(f"{args.images} images x {args.captions} captions ({args.dtype}, {torch.get_num_threads()} threads): "
          f"{elapsed:.0f} s wall, {sims.size / elapsed:,.0f} pairs/s; CPU time {cpu:.0f} s (on a busy machine the "
          f"wall time of an idle one is at least CPU time / threads = {cpu / torch.get_num_threads():.0f} s)")
    print(f"peak RSS {peak_rss_gib():.2f} GiB (before scoring {before:.2f} GiB); parts: region embeddings "
          f"{args.images * 36 * 1024 * item / 1024**3:.2f} GiB, score matrix {sims.nbytes / 1024**3:.2f} GiB, "
          f"features read from a memory map")


if __name__ == "__main__":
    main()
