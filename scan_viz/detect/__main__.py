"""Command line: ``python -m scan_viz.detect train | eval | extract``.

A thin layer over :mod:`scan_viz.detect`; a user error prints ``error: ...`` and exits 2.

    python -m scan_viz.detect train --world W --out D [--epochs 3 --batch-size 8 --lr 1e-3 --max-minutes 60]
    python -m scan_viz.detect eval --detector D --world W --split test [--json FILE]
    python -m scan_viz.detect extract --detector D --world W --split train dev test --out DATA
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Before torch loads OpenMP: on a shared machine, OpenMP's default of spinning while it waits made a 2-thread
# training step 5x slower than sleeping does (1.5 vs 8.1 images/s with another job on both cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from scan_viz.errors import ScanVizError, run_command  # noqa: E402


def cmd_train(args: argparse.Namespace) -> int:
    from scan_viz.detect.model import default_config
    from scan_viz.train.detector import train_detector

    config = default_config(backbone=args.backbone)
    summary = train_detector(args.world, args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             seed=args.seed, workers=args.workers, max_minutes=args.max_minutes, config=config,
                             eval_images=args.eval_images, max_train_images=args.max_train_images)
    print(f"trained {summary['epochs_done']} epoch(s), {summary['steps']} steps in {summary['minutes']:.1f} min; "
          f"detector in {args.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from scan_viz.detect.evaluate import evaluate_detector
    from scan_viz.detect.model import load_detector

    result = evaluate_detector(load_detector(args.detector), args.world, args.split, max_images=args.max_images,
                               log=print)
    worst = sorted(result["per_class"].items(), key=lambda kv: kv[1])[:5]
    print(f"{args.split}: mAP@0.5 {result['map50']:.4f} (objects {result['map50_objects']:.4f}, stuff "
          f"{result['map50_stuff']:.4f}) over {len(result['per_class'])} classes, {result['n_images']} images")
    print("lowest AP: " + ", ".join(f"{name} {ap:.3f}" for name, ap in worst))
    if args.json:
        from scan_viz.io import write_text_atomic

        write_text_atomic(Path(args.json), json.dumps(result, indent=1) + "\n")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from scan_viz.detect.extract import extract_world
    from scan_viz.detect.model import load_detector

    model = load_detector(args.detector)
    for split in args.split:
        extract_world(model, args.world, split, args.out, n_regions=args.n_regions, batch_size=args.batch_size)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (argparse itself prints ``error: ...`` and exits 2 on a malformed argument)."""
    from scan_viz.detect.model import BACKBONES

    parser = argparse.ArgumentParser(prog="python -m scan_viz.detect",
                                     description="Train, evaluate and run the synthetic world's region detector.")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: one per core; 1 is faster for inference on a busy machine)")

    p = sub.add_parser("train", parents=[common],
                       help="train a detector on a world's train split (resumes a run in --out)")
    p.add_argument("--world", required=True, help="world folder (python -m scan_viz.scenes)")
    p.add_argument("--out", required=True, help="detector folder to write (and resume from)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="training time budget; the schedule anneals to end within it")
    p.add_argument("--backbone", choices=sorted(BACKBONES), default="tiny-s16", help="backbone of a new run")
    p.add_argument("--eval-images", type=int, default=200, help="dev images scored after each epoch (0: none)")
    p.add_argument("--max-train-images", type=int, default=None, help="use only the first N train images")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", parents=[common], help="mAP@0.5 (VOC all-point) of a detector on a world split")
    p.add_argument("--detector", required=True, help="detector folder (detector.json + detector.safetensors)")
    p.add_argument("--world", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--json", help="also write the full result (per-class AP) here")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("extract", parents=[common], help="region features of world splits in the precomputed layout")
    p.add_argument("--detector", required=True)
    p.add_argument("--world", required=True)
    p.add_argument("--split", nargs="+", default=["train", "dev", "test"])
    p.add_argument("--out", required=True, help="data folder for scan-viz train --data")
    p.add_argument("--n-regions", type=int, default=36)
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=cmd_extract)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)

    def run(args: argparse.Namespace) -> int:
        if args.threads is not None:
            if args.threads < 1:
                raise ScanVizError(f"--threads must be at least 1, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        return args.func(args)
    return run_command(run, args)


if __name__ == "__main__":
    sys.exit(main())
