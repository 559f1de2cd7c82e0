"""Rebuild everything scan-viz bundles, with one command: world -> detector -> regions -> SCAN -> gallery.

    python -m scan_viz.train.bundle --work /tmp/scan-viz-build [--train 20000 --dev 1000 --test 1000]

Steps (each is skipped when its output already exists in ``--work``, so an interrupted build resumes):

1. ``world/``: the generated scenes (``python -m scan_viz.scenes``), seeded.
2. ``detector/``: a small Faster R-CNN trained from scratch on the train split; its mAP@0.5 on test.
3. ``precomp/``: 36 regions per image (features, boxes) for train/dev/test in the official precomputed layout.
4. ``scan-t2i/``, ``scan-i2t/``: SCAN trained with the official recipe (``scan_viz.train``), best by dev rsum.
5. Copies into the repository: ``pretrained/detector-emoji``, ``pretrained/scan-emoji-t2i``,
   ``pretrained/scan-emoji-i2t`` and ``examples/gallery`` (the test split as JPEG + its regions), then
   ``pretrained/metrics.json`` (detector mAP, retrieval and pointing on the gallery, wall times).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DETECTOR_NAME = "detector-emoji"
MODEL_NAMES = {"t2i": "scan-emoji-t2i", "i2t": "scan-emoji-i2t"}
#: What the bundled models know, written into their config (``extra["domain"]``): the app shows it on the model
#: card and next to an uploaded picture, which is out of this domain.
MODEL_DOMAIN = ("generated emoji scenes: 320x256 pictures of 58 kinds of emoji objects (animals, food, vehicles, "
                "things) over sky, grass, water, sand, snow and road, described by template captions")
# the bundled gallery must stay under 40 MB: 1,000 images x 36 regions x (192 + 12) float16 is 15 MB
REPRESENTATION_SIZE = 192
#: each direction's head settings as `scan-viz train` flags (generated from the SCAN head's declarations): the
#: paper's lambdas per direction
HEAD_FLAGS = {
    "t2i": ["--dir", "t2i", "--lambda-softmax", "9.0", "--lambda-lse", "6.0", "--agg-func", "LogSumExp"],
    "i2t": ["--dir", "i2t", "--lambda-softmax", "4.0", "--lambda-lse", "5.0", "--agg-func", "LogSumExp"],
}


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _timed(report: dict, name: str):
    class Timer:
        def __enter__(self):
            self.t = time.time()

        def __exit__(self, *exc):
            report.setdefault("wall_minutes", {})[name] = round((time.time() - self.t) / 60, 1)
    return Timer()


def build_world(work: Path, args: argparse.Namespace) -> Path:
    from scan_viz.scenes import write_world

    world = work / "world"
    if not (world / "test_annotations.json").exists():
        _log(f"generating the world: {args.train} train / {args.dev} dev / {args.test} test images")
        write_world(world, args.train, args.dev, args.test, seed=args.seed, workers=args.workers)
    return world


def build_detector(work: Path, world: Path, args: argparse.Namespace) -> Path:
    """Train the detector (or copy ``--detector-from``), then set its ``box_geometry`` as asked."""
    from scan_viz.detect import default_config
    from scan_viz.train.detector import train_detector

    out = work / "detector"
    if not (out / "detector.json").exists() or not (out / "DONE").exists():
        if args.detector_from:
            _log(f"reusing the trained detector in {args.detector_from}")
            out.mkdir(parents=True, exist_ok=True)
            for name in ("detector.json", "detector.safetensors"):
                shutil.copy2(Path(args.detector_from) / name, out / name)
        else:
            _log("training the detector")
            train_detector(world, out, config=default_config(representation_size=REPRESENTATION_SIZE),
                           epochs=args.detector_epochs, batch_size=args.detector_batch, seed=args.seed,
                           workers=args.workers, max_minutes=args.detector_minutes, log=_log)
        # geometry is read at extraction only: the weights are the same with or without it
        meta = json.loads((out / "detector.json").read_text(encoding="utf-8"))
        meta["box_geometry"] = bool(args.box_geometry)
        meta["img_dim"] = meta["representation_size"] + len(meta["colours"]) + (7 if args.box_geometry else 0)
        (out / "detector.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        (out / "DONE").write_text("ok\n")
    return out


def subset_world(world: Path, n_train: int, out: Path) -> Path:
    """A view of ``world`` whose train split is its first ``n_train`` images (dev and test unchanged)."""
    if (out / "test_annotations.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    train = json.loads((world / "train_annotations.json").read_text(encoding="utf-8"))
    train["images"] = train["images"][:n_train]
    (out / "train_annotations.json").write_text(json.dumps(train), encoding="utf-8")
    caps = (world / "train_caps.txt").read_text(encoding="utf-8").splitlines()[:5 * n_train]
    (out / "train_caps.txt").write_text("\n".join(caps) + "\n", encoding="utf-8")
    for split in ("dev", "test"):
        for name in (f"{split}_annotations.json", f"{split}_caps.txt"):
            shutil.copy2(world / name, out / name)
    if not (out / "images").exists():
        os.symlink((world / "images").resolve(), out / "images")
    (out / "test_annotations.json").touch()
    return out


def extract(work: Path, world: Path, detector_dir: Path, args: argparse.Namespace) -> Path:
    from scan_viz.detect import extract_world, load_detector

    precomp = work / "precomp"
    source = subset_world(world, args.scan_train_images, work / "world-scan") if args.scan_train_images else world
    detector = load_detector(detector_dir)
    for split in ("train", "dev", "test"):
        if not (precomp / f"{split}_ims.npy").exists():
            _log(f"extracting regions: {split}")
            extract_world(detector, source, split, precomp, log=_log)
    return precomp


def train_scan(work: Path, precomp: Path, args: argparse.Namespace) -> dict[str, Path]:
    """Both directions at once, one thread each (two cores), with the official recipe via `scan-viz train`."""
    import subprocess
    import sys

    runs = {d: work / f"scan-{d}" for d in MODEL_NAMES}
    if args.scan_images:  # train on the first N extracted train images (the official layout, sliced)
        precomp = _slice_precomp(precomp, args.scan_images, work / f"precomp-{args.scan_images}")
    procs = {}
    for direction, run in runs.items():
        if (run / "DONE").exists():
            continue
        cmd = [sys.executable, "-m", "scan_viz.cli", "train", "--data", str(precomp), "--out", str(run),
               "--embed-size", str(args.embed_size), "--word-dim", str(args.word_dim), "--bi-gru",
               *(["--max-violation", "--max-violation-warmup", str(args.max_violation_warmup)] if args.max_violation else []),
               *HEAD_FLAGS[direction],
               "--num-epochs", str(args.scan_epochs), "--lr-update", str(args.scan_lr_update),
               "--learning-rate", str(args.scan_lr), "--batch-size", "128", "--vocab-threshold", "1",
               "--max-dev-captions", str(args.max_dev_captions), "--workers", "1", "--seed", str(args.seed),
               "--no-progress"]
        if (run / "last.pt").exists():
            cmd.append("--resume")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
        _log(f"training SCAN {direction}: {' '.join(cmd[2:])}")
        log = open(work / f"scan-{direction}.log", "a")
        procs[direction] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    for direction, (proc, log) in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"SCAN {direction} training failed: see {work / f'scan-{direction}.log'}")
        log.close()
        (runs[direction] / "DONE").write_text("ok\n")
    return runs


def _slice_precomp(precomp: Path, n_images: int, out: Path) -> Path:
    if (out / "test_ims.npy").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "train_ims.npy", np.load(precomp / "train_ims.npy", mmap_mode="r")[:n_images])
    caps = (precomp / "train_caps.txt").read_text(encoding="utf-8").splitlines()[:5 * n_images]
    (out / "train_caps.txt").write_text("\n".join(caps) + "\n", encoding="utf-8")
    for split in ("dev", "test"):
        for name in (f"{split}_ims.npy", f"{split}_caps.txt"):
            shutil.copy2(precomp / name, out / name)
    return out


def install(work: Path, world: Path, detector_dir: Path, runs: dict[str, Path], args: argparse.Namespace) -> None:
    """Copy the detector and models into pretrained/ and build examples/gallery from the test split."""
    from scan_viz.detect import extract_regions, load_detector
    from scan_viz.gallery import write_gallery
    from scan_viz.io import write_dir_atomic
    from scan_viz.model import load_model
    from scan_viz.regions.images import load_image
    from scan_viz.regions.store import RegionStore

    pretrained = REPO / "pretrained"
    write_dir_atomic(pretrained / DETECTOR_NAME, lambda tmp: [shutil.copy2(detector_dir / f, tmp / f)
                                                             for f in ("detector.json", "detector.safetensors")])
    for direction, run in runs.items():
        model = load_model(run / "best")
        model.config.extra["detector"] = DETECTOR_NAME
        model.config.extra["domain"] = MODEL_DOMAIN
        model.save(pretrained / MODEL_NAMES[direction])

    _log("building the gallery from the test split")
    import io

    from PIL import Image

    records = json.loads((world / "test_annotations.json").read_text(encoding="utf-8"))
    records = records["images"] if isinstance(records, dict) else records
    jpegs, images = [], []
    for record in records:
        rgb = load_image(world / record["file_name"])
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=args.jpeg_quality, optimize=True)
        jpegs.append(buf.getvalue())  # shipped as these bytes: the regions are those of the file users see
        images.append(load_image(jpegs[-1]))
    detector = load_detector(detector_dir)
    regions = []
    for start in range(0, len(images), 16):
        regions += extract_regions(detector, images[start:start + 16])
    store = RegionStore(ids=[r["id"] for r in records], features=np.stack([r.features for r in regions]),
                        boxes=np.stack([r.boxes for r in regions]).astype(np.float32),
                        image_sizes=np.array([r.image_size for r in regions]))
    keep = ("id", "width", "height", "objects", "captions")
    records = [{k: r[k] for k in keep} for r in records]
    if not all("claims" in c for r in records for c in r["captions"]):
        from scan_viz.evaluation.truth import annotate_records

        annotate_records(records)  # a world generated before captions carried their claims
    write_gallery(REPO / "examples" / "gallery", "emoji world, test split", records, jpegs, store,
                  [r.labels for r in regions], jpeg_quality=args.jpeg_quality)
    from scan_viz.gallery import load_gallery

    gallery = load_gallery(REPO / "examples" / "gallery")
    drift = max(int(np.abs(gallery.load_image(i).astype(int) - images[k].astype(int)).max())
                for k, i in enumerate(gallery.ids))
    if drift:
        raise SystemExit(f"the shipped gallery images differ from the pixels the regions came from (drift {drift})")
    _log(f"gallery written ({len(gallery)} images); its regions are those of the shipped JPEGs")


def evaluate_all(work: Path, world: Path, detector_dir: Path, report: dict) -> None:
    from scan_viz.detect import evaluate_detector, load_detector
    from scan_viz.gallery import load_gallery
    from scan_viz.model import load_model
    from scan_viz.pipeline import evaluate_gallery

    det = evaluate_detector(load_detector(detector_dir), world, "test")
    report["detector"] = {"map50": det["map50"], "n_images": det["n_images"]}
    gallery = load_gallery(REPO / "examples" / "gallery")
    for direction, name in MODEL_NAMES.items():
        _log(f"evaluating {name} on the gallery")
        report[name] = evaluate_gallery(load_model(name), gallery)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="rebuild the bundled detector, SCAN models and gallery")
    ap.add_argument("--work", default="/tmp/scan-viz-build", help="working folder (large: the world's images)")
    ap.add_argument("--train", type=int, default=20000)
    ap.add_argument("--dev", type=int, default=1000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--detector-epochs", type=int, default=3)
    ap.add_argument("--detector-batch", type=int, default=8)
    ap.add_argument("--detector-minutes", type=float, default=None, help="stop detector training after this long")
    ap.add_argument("--detector-from", default=None,
                    help="copy this trained detector folder (e.g. pretrained/detector-emoji) instead of training one")
    ap.add_argument("--box-geometry", action=argparse.BooleanOptionalAction, default=True,
                    help="append each region's normalised box (7 dims) to its feature (our detector's choice)")
    ap.add_argument("--scan-epochs", type=int, default=12)
    ap.add_argument("--scan-lr", type=float, default=5e-4)
    ap.add_argument("--scan-lr-update", type=int, default=8)
    ap.add_argument("--scan-train-images", type=int, default=0, help="train SCAN on the first N train images (0: all)")
    ap.add_argument("--scan-images", type=int, default=0, help="SCAN trains on the first N extracted train images")
    # Hardest negatives from the first step collapsed every score to one value on this world (loss stuck at
    # 2 x batch x margin); the sum over all negatives (VSE0) learns. CHAN likewise starts without them.
    ap.add_argument("--max-violation", action="store_true", help="hardest negatives only (official; see above)")
    ap.add_argument("--max-violation-warmup", type=int, default=1, metavar="EPOCHS",
                    help="with --max-violation: sum over negatives for the first EPOCHS epochs")
    ap.add_argument("--max-dev-captions", type=int, default=1000, help="dev captions scored after each epoch")
    ap.add_argument("--embed-size", type=int, default=256)
    ap.add_argument("--word-dim", type=int, default=128)
    ap.add_argument("--jpeg-quality", type=int, default=85)
    ap.add_argument("--steps", default="world,detector,extract,train,install,eval")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    steps = set(args.steps.split(","))
    report_path = work / "report.json"
    report: dict[str, Any] = json.loads(report_path.read_text()) if report_path.exists() else {}
    report["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
    report["args"] = vars(args)
    world = work / "world"
    detector_dir = work / "detector"
    precomp = work / "precomp"
    runs = {d: work / f"scan-{d}" for d in MODEL_NAMES}
    if "world" in steps:
        with _timed(report, "world"):
            world = build_world(work, args)
    if "detector" in steps:
        with _timed(report, "detector"):
            detector_dir = build_detector(work, world, args)
    if "extract" in steps:
        with _timed(report, "extract"):
            precomp = extract(work, world, detector_dir, args)
    if "train" in steps:
        with _timed(report, "train_both_directions"):
            runs = train_scan(work, precomp, args)
    if "install" in steps:
        with _timed(report, "install"):
            install(work, world, detector_dir, runs, args)
    if "eval" in steps:
        with _timed(report, "eval"):
            evaluate_all(work, world, detector_dir, report)
        (REPO / "pretrained" / "metrics.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    _log(f"done: {report.get('wall_minutes')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
