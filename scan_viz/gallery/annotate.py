"""``python -m scan_viz.gallery.annotate``: add each caption's claims (the truth check's input) to a gallery.json or
a generated world's ``{split}_annotations.json``, in place."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from scan_viz.errors import ScanVizError, run_command
from scan_viz.evaluation.truth import annotate_records, truth_matrix
from scan_viz.gallery import GALLERY_FILE, MAX_RECORDS_BYTES
from scan_viz.io import write_text_atomic
from scan_viz.safe_files import read_json


def annotate_file(path: str | Path) -> dict[str, Any]:
    """Add claims to a gallery.json or ``{split}_annotations.json`` in place (atomically); returns a summary.

    The summary: ``{"captions", "images", "images_per_caption": {"mean", "median", "p90"}}``, how many
    images each caption is true of.
    """
    target = Path(path)

    try:
        data = read_json(target, "annotations file", max_bytes=MAX_RECORDS_BYTES)
    except ScanVizError as exc:
        raise ScanVizError(f"{exc}; give a gallery.json or a world's annotations file") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ScanVizError(f"{target} has no image records; give a gallery.json or a world's annotations file")
    records = data["images"]
    n = annotate_records(records)
    write_text_atomic(target, json.dumps(data, separators=(",", ":")))
    per_caption = truth_matrix([c["claims"] for r in records for c in r["captions"]], records).sum(axis=1)
    return {"captions": n, "images": len(records),
            "images_per_caption": {"mean": float(per_caption.mean()) if n else float("nan"),
                                   "median": float(np.median(per_caption)) if n else float("nan"),
                                   "p90": float(np.percentile(per_caption, 90)) if n else float("nan")}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scan_viz.gallery.annotate",
                                     description="The truth check of the generated world's captions.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("annotate", help="add each caption's claims to a gallery or a world's annotations, in place")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--gallery", help="a gallery folder (its gallery.json is rewritten)")
    src.add_argument("--annotations", help="a world's {split}_annotations.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)

    def annotate() -> int:
        path = Path(args.gallery) / GALLERY_FILE if args.gallery else Path(args.annotations)
        summary = annotate_file(path)
        per = summary["images_per_caption"]
        print(f"added claims to {summary['captions']} captions of {summary['images']} images in {path}; a caption "
              f"is true of {per['mean']:.1f} images on average (median {per['median']:g}, 90th percentile "
              f"{per['p90']:g})")
        return 0

    return run_command(annotate)


if __name__ == "__main__":
    sys.exit(main())
