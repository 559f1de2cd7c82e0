"""Command line: ``python -m scan_viz.scenes --out DIR --train N --dev N --test N --seed S``.

A thin layer over :func:`scan_viz.scenes.write_world`; a user error prints ``error: ...`` and exits 2.
"""
from __future__ import annotations

import argparse
import sys

from scan_viz.errors import ScanVizError
from scan_viz.scenes.generate import DEFAULT_SIZE
from scan_viz.scenes.world import write_world


def _size(text: str) -> tuple[int, int]:
    """Parse ``WIDTHxHEIGHT``."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"size must look like 320x256, got {text!r}") from err
    return width, height


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (argparse itself prints ``error: ...`` and exits 2 on a malformed argument)."""
    parser = argparse.ArgumentParser(prog="python -m scan_viz.scenes",
                                     description="Write a synthetic emoji world with grounded captions.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--train", type=int, default=0, help="number of train images")
    parser.add_argument("--dev", type=int, default=0, help="number of dev images")
    parser.add_argument("--test", type=int, default=0, help="number of test images")
    parser.add_argument("--seed", type=int, default=0, help="world seed")
    parser.add_argument("--size", type=_size, default=DEFAULT_SIZE, help="image size WIDTHxHEIGHT (default 320x256)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        summary = write_world(args.out, args.train, args.dev, args.test, args.seed, size=args.size,
                              workers=args.workers)
    except ScanVizError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    images = summary["images"]
    print(f"wrote {sum(images.values())} images ({images['train']} train, {images['dev']} dev, "
          f"{images['test']} test) to {args.out} in {summary['seconds']:.1f} s "
          f"({summary['images_per_second']} images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
