"""``scan-viz search`` and ``scan-viz index``: two-stage retrieval and gallery indexing on the command line."""
from __future__ import annotations

import argparse
import json
import os


def add_search_parser(sub) -> None:
    p = sub.add_parser("search", help="text -> gallery images or image -> gallery captions, two-stage")
    p.add_argument("--gallery", required=True, help="a gallery folder (examples/gallery or one from `scan-viz index`)")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="the sentence (text -> images)")
    query.add_argument("--image", help="a gallery image id or an image file (image -> captions)")
    p.add_argument("-k", type=int, default=10, help="results to return")
    p.add_argument("--stage1-k", type=int, default=None,
                   help="candidates stage 1 passes to the head; 0 = exhaustive (default: the token screen's K for the "
                        "gallery size, or the stage-1 head's K with --stage1 pooled)")
    p.add_argument("--stage1", choices=("tokens", "pooled"), default="tokens",
                   help="text -> images stage 1: tokens (each word retrieves its nearest regions; default, K from the "
                        "gallery size) or pooled (one vector per image, the stage-1 head's K)")
    p.add_argument("--head", help="matching head that re-ranks (default: SCAN in the model's direction)")
    p.add_argument("--model", help="model directory or name under pretrained/ (default: the bundled model)")
    p.add_argument("--detector", help="detector folder for an image file (default: the one the model names)")
    p.add_argument("--json", help="also write the results as JSON here (- for standard output): [{id, score, "
                                  "stage1_rank}, ...], image -> text adds caption and image_id")
    p.set_defaults(func=cmd_search, output_files=("json",))


def cmd_search(args: argparse.Namespace) -> int:
    from scan_viz.errors import ScanVizError
    from scan_viz.gallery import load_gallery
    from scan_viz.io import write_output
    from scan_viz.model import load_model
    from scan_viz.pipeline import DEFAULT_MODEL
    from scan_viz.retrieval.search import gallery_search

    if args.k < 1:
        raise ScanVizError(f"-k must be at least 1, got {args.k}")
    gallery = load_gallery(args.gallery)
    model = load_model(args.model or DEFAULT_MODEL)
    search = gallery_search(model, gallery, screen=args.stage1)
    if args.text is not None:
        hits = search.search_text(args.text, args.k, args.stage1_k, args.head)
        rows = [h.to_json() for h in hits]
    else:
        if args.image in gallery.ids:
            hits = search.search_image(args.image, args.k, args.stage1_k, args.head)
        elif os.path.lexists(args.image):  # load_image refuses a folder, a FIFO or a device as such
            from scan_viz.pipeline import detect, detector_for
            from scan_viz.regions.images import load_image

            regions = detect(detector_for(model, args.detector), load_image(args.image))
            hits = search.search_regions(regions.features, args.k, args.stage1_k, args.head)
        else:
            raise ScanVizError(f"--image {args.image!r} is neither an image id of the gallery nor an image file")
        rows = [{**h.to_json(), "caption": gallery.captions[h.id],
                 "image_id": gallery.ids[int(gallery.caption_image[h.id])]} for h in hits]
    how = "exhaustive" if not hits or hits[0].stage1_rank is None else "two-stage"
    print(f"{len(rows)} results ({how}):")
    _print_hits(rows, gallery, text_query=args.text is not None)
    if args.json:
        write_output(args.json, json.dumps(rows, indent=2) + "\n", "--json", args.stdout)
        print(f"wrote {args.json}")
    return 0


def _print_hits(rows: list[dict], gallery, text_query: bool) -> None:
    """One line a result: rank, score, the image id (text -> images) or the caption and its image's id."""
    for rank, row in enumerate(rows, 1):
        where = "" if row.get("stage1_rank") is None else f"  (stage 1: #{row['stage1_rank']})"
        if text_query:
            print(f"{rank:>4}. {row['score']:8.4f}  {row['id']}{where}")
        else:
            print(f"{rank:>4}. {row['score']:8.4f}  {row['caption']}  [{row['image_id']}]{where}")


def add_index_parser(sub) -> None:
    p = sub.add_parser("index", help="a folder of images -> a gallery (regions + stage-1 index), resumable")
    p.add_argument("--images", required=True, help="folder of image files; each file's stem is its image id")
    p.add_argument("--out", required=True, help="gallery folder to create or extend")
    p.add_argument("--captions", help="optional text file, one 'image_id<TAB>caption' per line")
    p.add_argument("--model", default="scan-emoji-t2i", help="model whose detector and encoders to use")
    p.add_argument("--detector", help="detector folder (default: the one the model names)")
    p.add_argument("--ray", help="run detection and encoding on Ray Data: a cluster ADDRESS, or auto")
    p.add_argument("--workers", type=int, default=2, help="Ray actors (with --ray)")
    p.add_argument("--chunk", type=int, default=16, help="images per saved chunk (the unit of resuming)")
    p.set_defaults(func=cmd_index)


def cmd_index(args: argparse.Namespace) -> int:
    import sys

    from scan_viz.errors import ScanVizError
    from scan_viz.index import index_images
    from scan_viz.progress import Progress

    if args.chunk < 1 or args.workers < 1:
        raise ScanVizError("--chunk and --workers must be at least 1")
    result = index_images(args.images, args.out, args.model, args.captions, args.detector, args.ray, args.workers,
                          args.chunk, progress=Progress("indexing", unit="img", lines=False))
    for failure in result.failed:
        print(f"skipped {failure['file']}: {failure['error']}", file=sys.stderr)
    print(f"wrote {result.gallery}: {result.added} images added, {result.kept} kept, {len(result.failed)} skipped "
          f"(listed in {result.gallery / 'index_report.json'})")
    return 0


def add_gallery_parser(sub) -> None:
    p = sub.add_parser("gallery", help="build a gallery folder from your own region features and captions")
    gsub = p.add_subparsers(dest="gallery_command", required=True)
    b = gsub.add_parser("build", help="region features (+ captions, images, ids) -> a gallery folder the app, eval "
                                      "--gallery and search open (format: docs/gallery-format.md)")
    b.add_argument("--regions", required=True,
                   help="official {split}_ims.npy (its {split}_caps.txt beside it gives the captions; no boxes), a "
                        "bottom-up-attention .tsv or a folder of them, or a folder of per-image .npz files")
    b.add_argument("--captions", help="captions: 5 lines per image in image order (official layout), or "
                                      "'image_id<TAB>caption' lines (default for {split}_ims.npy: {split}_caps.txt)")
    b.add_argument("--images", help="folder of the images the features were extracted from; file stem = image id "
                                    "(without it nothing can be drawn, retrieval and recall still work)")
    b.add_argument("--ids", help="one image id per line, in the order of the feature rows (replaces the features' "
                                 "ids; the official .npy's are row numbers 0..N-1)")
    b.add_argument("--out", required=True, help="gallery folder to create (refused if it exists, unless --force)")
    b.add_argument("--name", help="the gallery's name on screen (default: the folder's name)")
    b.add_argument("--force", action="store_true", help="replace an existing gallery folder (atomically)")
    b.add_argument("--feature-dtype", choices=("float32", "float16"), default="float32",
                   help="how features are stored: float32 keeps scores exact, float16 halves the folder")
    b.add_argument("--memory-gb", type=float, help="memory reading TSV or .npz files may take (default 1; COCO's "
                                                   "5,000 images need 2); an official .npy is memory-mapped")
    b.set_defaults(func=cmd_gallery_build)
    n = gsub.add_parser("npz", help="region features with boxes -> one float16 .npz per image, what the app's "
                                    "upload takes (1,000 images x 36 x 2048: 147 MB, under its region cap)")
    n.add_argument("--regions", required=True, help="a bottom-up-attention .tsv or a folder of them, or of .npz")
    n.add_argument("--out", required=True, help="folder to create for the .npz files")
    n.add_argument("--feature-dtype", choices=("float16", "float32"), default="float16")
    n.add_argument("--memory-gb", type=float, help="memory reading the region files may take (default 1)")
    n.set_defaults(func=cmd_gallery_npz)


def cmd_gallery_build(args: argparse.Namespace) -> int:
    from scan_viz.gallery.build import build_gallery

    report = build_gallery(args.regions, args.out, captions=args.captions, images=args.images, ids=args.ids,
                           name=args.name, force=args.force, feature_dtype=args.feature_dtype,
                           budget=_budget(args.memory_gb))
    print(report.summary())
    if report.uncaptioned:
        print(f"note: {report.uncaptioned:,} images have no caption; eval --gallery needs at least one per image")
    return 0


def cmd_gallery_npz(args: argparse.Namespace) -> int:
    from scan_viz.gallery.build import export_npz

    n_bytes = export_npz(args.regions, args.out, args.feature_dtype, _budget(args.memory_gb))
    print(f"wrote {args.out}: {n_bytes / 2**20:,.1f} MB of .npz files ({args.feature_dtype} features)")
    return 0


def _budget(memory_gb: float | None):
    """A load budget of ``memory_gb`` (None: the library's default)."""
    from scan_viz.errors import ScanVizError
    from scan_viz.safe_files import GiB, LoadBudget

    if memory_gb is None:
        return None
    if not memory_gb > 0:
        raise ScanVizError(f"--memory-gb must be above 0, got {memory_gb:g}")
    return LoadBudget(int(memory_gb * GiB))
