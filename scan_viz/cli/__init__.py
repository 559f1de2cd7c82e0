"""``scan-viz``: a thin command line over the library. User errors print one ``error:`` line, exit 2."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from scan_viz.errors import ScanVizError, run_command
from scan_viz.limits import MAX_WORDS
from scan_viz.progress import Progress

#: ``--help``'s first paragraph (plain text: the module docstring is reStructuredText for the API docs).
DESCRIPTION = ("See how SCAN-family image-text matching models line words up with image regions: score, evaluate, "
               "explain, search and index galleries, convert official checkpoints, train. A user error prints one "
               "'error:' line and exits with status 2.")


def _add_model_args(p: argparse.ArgumentParser, model_required: bool = True) -> None:
    from scan_viz.heads import SCORING_DTYPES, all_head_params, head_names, heads_declaring

    p.add_argument("--model", required=model_required,
                   help="official checkpoint file (needs --vocab), model directory, or a name under pretrained/"
                        + ("" if model_required else " (default: the bundled model)"))
    p.add_argument("--vocab", help="vocabulary JSON (official format) for an official checkpoint")
    p.add_argument("--head", help=f"matching head: {', '.join(head_names())} (default: the one the model was trained "
                                  "with)")
    settings = p.add_argument_group("head settings (default: the model's own, else the paper's)")
    for param in all_head_params():  # generated from the heads' declarations
        kind = dict(choices=param.choices) if param.choices else dict(type=float, metavar="X")
        bounds = "" if param.choices else f" ({param.low:g}-{param.high:g})"
        settings.add_argument(*param.flags, dest=param.name, **kind,
                              help=f"{param.help}{bounds}; heads: {', '.join(heads_declaring(param.name))}")
    p.add_argument("--dtype", choices=SCORING_DTYPES, default="float32",
                   help="bfloat16: region-word products in bf16 (about 2x faster on CPUs with AMX/AVX512-BF16 and "
                        "on GPUs; emulated and far slower on CPUs without AVX-512), the rest in float32")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--memory-gb", type=float, default=2.0, help="memory budget for a block of pairs")


def _load(args: argparse.Namespace):
    from scan_viz.heads import all_head_params, choose_head
    from scan_viz.model import load_model
    from scan_viz.pipeline import DEFAULT_MODEL

    model = load_model(args.model or DEFAULT_MODEL, args.vocab)
    # the head as the app and its links name it (a variant: SCAN's direction is part of its name)
    name, overrides = choose_head(args.head, model.config, {p.name: getattr(args, p.name) for p in all_head_params()})
    if args.dtype == "bfloat16":
        from scan_viz.heads.similarity import bfloat16_emulated_note

        note = bfloat16_emulated_note(args.device)
        if note:
            print(note, file=sys.stderr)
    return model, model.head(name, **overrides)


def read_features(path: str) -> np.ndarray:
    """A (n_images, n_regions, img_dim) float array from .npy, memory-mapped once its header was checked."""
    from scan_viz.safe_files import load_npy

    feats = load_npy(path, "region features", mmap=True, kinds="f")
    if feats.ndim != 3 or feats.dtype.kind != "f":
        raise ScanVizError(f"{path}: expected a float array (n_images, n_regions, img_dim), "
                           f"got {feats.dtype} {feats.shape}")
    return feats


def read_captions(path: str) -> list[str]:
    """One caption per line (UTF-8, :func:`scan_viz.regions.store.read_lines`); an empty line is an error naming its number."""
    from scan_viz.regions.store import read_lines
    from scan_viz.safe_paths import MAX_JSON_BYTES

    lines = read_lines(path, "captions", MAX_JSON_BYTES)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise ScanVizError(f"{path}: line {number} is empty; give one caption per line")
    return lines


def cmd_score(args: argparse.Namespace) -> int:
    feats = read_features(args.images)
    captions = read_captions(args.captions)
    model, head = _load(args)
    sims = model.similarity(feats, captions, dtype=args.dtype, device=args.device, head=head,
                            memory_budget=int(args.memory_gb * 1024**3), progress=Progress("scoring"))
    _save_npy(args.out, sims, args.stdout)
    print(f"wrote {args.out}: {sims.shape[0]} images x {sims.shape[1]} captions ({head.name}, {args.dtype})")
    return 0


def _save_npy(path: str, array: np.ndarray, stdout=None) -> None:
    import io

    from scan_viz.io import write_output

    buffer = io.BytesIO()
    np.save(buffer, array)
    write_output(path, buffer.getvalue(), "--out", stdout)


def cmd_eval(args: argparse.Namespace) -> int:
    if args.gallery:
        return _eval_gallery(args)
    from scan_viz.evaluation.metrics import evaluate, evaluate_fold5
    from scan_viz.regions.store import load_precomp

    split = load_precomp(args.data, args.split)
    model, head = _load(args)
    feats = np.asarray(split.regions.features)
    budget = int(args.memory_gb * 1024**3)

    def score(img_sl: slice, cap_sl: slice) -> np.ndarray:
        return model.similarity(feats[img_sl], split.captions[cap_sl], dtype=args.dtype, device=args.device,
                                head=head, memory_budget=budget, progress=Progress("scoring"))

    n_img = len(split.regions)
    if args.fold5:
        metrics = evaluate_fold5(score, n_img, caption_image=split.caption_image)
    else:
        metrics = evaluate(score(slice(0, n_img), slice(0, len(split.captions))), split.caption_image)
    result = {**metrics.to_dict(), "head": head.name}
    _print_metrics(result)
    _write_json(args.json, result, args.stdout)
    return 0


def _eval_gallery(args: argparse.Namespace) -> int:
    from scan_viz.gallery import load_gallery
    from scan_viz.pipeline import evaluate_gallery

    gallery = load_gallery(args.gallery)
    model, head = _load(args)
    then = [what for what, applies in (("pointing accuracy", gallery.regions.boxes is not None
                                        and any(gallery.caption_words)), ("truth-aware recall", gallery.has_claims))
            if applies]
    print(f"evaluating {head.name} on {gallery.name}: {len(gallery):,} images x {len(gallery.captions):,} captions"
          + (f", then {' and '.join(then)}" if then else ""), file=sys.stderr, flush=True)
    result = evaluate_gallery(model, gallery, head, progress=Progress("scoring"), dtype=args.dtype)
    _print_metrics(result)
    _print_truth(result)
    if "pointing_accuracy" not in result:
        print("pointing accuracy: not measured (the gallery has no region boxes or no grounded caption words)")
        _write_json(args.json, result, args.stdout)
        return 0
    base = result["baselines"]
    print(f"pointing accuracy: {result['pointing_accuracy']:.1f}%  (random region "
          f"{base['random']['overall']:.1f}%, largest region {base['largest']['overall']:.1f}%)")
    for word_type, acc in result["pointing"].items():
        print(f"  {word_type:<9} {acc:5.1f}%  n={result['counts'][word_type]:<6} random "
              f"{base['random'][word_type]:5.1f}%  largest {base['largest'][word_type]:5.1f}%")
    for word, row in result.get("stuff_words", {}).items():
        print(f"    stuff {word:<7} {row['accuracy']:5.1f}%  n={row['count']:<6} random {row['random']:5.1f}%  "
              f"largest {row['largest']:5.1f}%")
    _write_json(args.json, result, args.stdout)
    return 0


def _print_truth(result: dict) -> None:
    """Truth-aware recall and what the wrongly top-ranked images get wrong (or why they are not measured)."""
    if "truth" not in result:
        print(f"truth-aware recall: not measured ({result.get('truth_note', 'no claims')})")
        return
    truth = result["truth"]
    print(f"Truth-aware (a hit is any image / caption the caption is true of; a caption is true of "
          f"{truth['images_per_caption']:.1f} images on average):")
    for direction, label in (("i2t", "Image to text"), ("t2i", "Text to image")):
        m = truth[direction]
        print(f"  {label}: R@1 {m['r1']:.1f}  R@5 {m['r5']:.1f}  R@10 {m['r10']:.1f}  "
              f"medr {m['medr']:.1f}  meanr {m['meanr']:.1f}")
    mistakes = truth["t2i_mistakes"]
    print(f"  rsum: {truth['rsum']:.1f}")
    print(f"t2i top-1 mistakes (top image not true of the caption): {mistakes['n']} "
          f"({mistakes['genuine']:.0f}% of the {mistakes['strict_failures']} strict R@1 failures); the top image "
          "is wrong on: " + ", ".join(f"{a} {p:.0f}%" for a, p in
                                      sorted(mistakes["attributes"].items(), key=lambda kv: -kv[1])))


def _write_json(path: str | None, result: dict, stdout=None) -> None:
    """``result`` as JSON into ``path`` (``-``: ``stdout``); nothing when ``path`` is None."""
    if not path:
        return
    from scan_viz.io import write_output

    write_output(path, json.dumps(result, indent=2) + "\n", "--json", stdout)


def cmd_explain(args: argparse.Namespace) -> int:
    from scan_viz.limits import check_device, check_sentence
    from scan_viz.regions.images import load_image

    # every check that needs no model comes first, cheapest first (an image's size is read from its header,
    # the sentence's length before NLTK loads), so a bad input is answered before torch loads
    image = load_image(args.image) if args.image else None
    check_sentence(args.text)
    check_device(args.device)
    from scan_viz.pipeline import (DEFAULT_GALLERY, DEFAULT_MODEL, alignment_json, detect, detector_for, explain,
                                   gallery_regions)
    from scan_viz.render import figure_to_png, word_panels

    model, head = _load(args)
    if image is None:
        from scan_viz.gallery import load_gallery

        gallery = load_gallery(args.gallery or DEFAULT_GALLERY)
        regions = gallery_regions(gallery, args.gallery_image)  # its stored regions, as the app uses them
        image = gallery.load_image(args.gallery_image)
        source = {"gallery": gallery.name, "id": args.gallery_image}
    else:
        regions = detect(detector_for(model, args.detector), image)
        source = {"file": Path(args.image).name}
        _domain_note(model, regions, args.gallery or DEFAULT_GALLERY)
    alignment = explain(model, regions, args.text, head, dtype=args.dtype, device=args.device)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScanVizError(f"cannot create {out}: {exc.strerror or exc}") from None
    model_name = args.model or DEFAULT_MODEL
    _write_json(str(out / "alignment.json"), alignment_json(alignment, head, Path(model_name).name, source))
    from scan_viz.io import atomic_path

    with atomic_path(out / "heatmaps.png") as tmp:
        tmp.write_bytes(figure_to_png(word_panels(image, alignment)))
    unknown = [w for w, u in zip(alignment.words, alignment.unknown) if u]
    print(f"score {alignment.score:.4f} ({alignment.head}); wrote {out / 'alignment.json'} "
          f"and {out / 'heatmaps.png'}")
    if unknown:
        known = len(alignment.words) - 2 - len(unknown)
        print(f"note: {len(unknown)} word(s) not in the model's vocabulary, read as <unk>: {', '.join(unknown)}"
              + (" (no known word: the alignment carries little meaning)" if known == 0 else ""))
    return 0


def _domain_note(model, regions, gallery_dir) -> None:
    """A note when the picture's regions are less like the gallery's than its own images' (scan_viz.regions.domain)."""
    from scan_viz.gallery import load_gallery
    from scan_viz.pipeline import gallery_domain_check
    from scan_viz.regions.domain import embed_regions

    gallery = load_gallery(gallery_dir)
    check = gallery_domain_check(model, gallery)
    if check is not None and not check.in_domain(embed_regions(model, regions)):
        domain = str(model.config.extra.get("domain") or "").strip()
        print(f"note: out of domain: the picture's regions are less like the gallery's ({gallery.name}) than those "
              f"of any of {check.n_calibration} sampled gallery images"
              + (f"; the model was trained only on {domain}" if domain else "") + ": the alignment means little")


def _print_metrics(result: dict) -> None:
    for direction, label in (("i2t", "Image to text"), ("t2i", "Text to image")):
        m = result[direction]
        print(f"{label}: R@1 {m['r1']:.1f}  R@5 {m['r5']:.1f}  R@10 {m['r10']:.1f}  "
              f"medr {m['medr']:.1f}  meanr {m['meanr']:.1f}")
    print(f"rsum: {result['rsum']:.1f}  ({result['n_images']} images, {result['n_captions']} captions)")


def cmd_convert(args: argparse.Namespace) -> int:
    from scan_viz.model.checkpoint import CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE, convert_official

    convert_official(args.checkpoint, args.vocab, args.out)
    print(f"wrote {args.out} ({CONFIG_FILE}, {WEIGHTS_FILE}, {VOCAB_FILE})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from scan_viz.train.loop import run_training

    run_training(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scan-viz", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="score every image against every caption")
    _add_model_args(p)
    p.add_argument("--images", required=True, help="(n_images, n_regions, img_dim) float32 .npy")
    p.add_argument("--captions", required=True, help="text file, one caption per line (UTF-8)")
    p.add_argument("--out", required=True, help="output .npy (n_images, n_captions); - for standard output")
    p.set_defaults(func=cmd_score, output_files=("out",))

    p = sub.add_parser("eval", help="R@1/5/10, medr, meanr, rsum on a precomputed split or a gallery")
    _add_model_args(p, model_required=False)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="directory with {split}_ims.npy and {split}_caps.txt")
    src.add_argument("--gallery", help="a gallery folder (adds pointing accuracy per word type, and truth-aware "
                     "recall when its captions carry claims)")
    p.add_argument("--split", default="test")
    p.add_argument("--fold5", action="store_true", help="COCO 1K: average over 5 folds of 1,000 images")
    p.add_argument("--json", help="also write the metrics as JSON here (- for standard output)")
    p.set_defaults(func=cmd_eval, output_files=("json",))

    p = sub.add_parser("explain", help="one image + one sentence -> alignment.json and heatmaps.png")
    _add_model_args(p, model_required=False)
    image = p.add_mutually_exclusive_group(required=True)
    image.add_argument("--image", help="PNG, JPEG, WebP, ... file (its regions come from the detector)")
    image.add_argument("--gallery-image", metavar="ID",
                       help="a gallery image's id: its stored regions, as the app uses them (same score)")
    p.add_argument("--gallery", help="the gallery of --gallery-image (default: the bundled one)")
    p.add_argument("--text", required=True, help=f"the sentence (at most {MAX_WORDS} words)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--detector", help="detector folder (default: the one the model names)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("convert", help="official checkpoint + vocab -> the project's model directory")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--vocab", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_convert)

    from scan_viz.cli.scale import add_gallery_parser, add_index_parser, add_search_parser

    add_search_parser(sub)
    add_index_parser(sub)
    add_gallery_parser(sub)

    from scan_viz.train.args import add_train_args

    p = sub.add_parser("train", help="train SCAN on a precomputed layout (official recipe)")
    add_train_args(p)
    p.set_defaults(func=cmd_train)
    return parser


def _checked(args: argparse.Namespace) -> int:
    """Refuse an unusable head setting before any file or model is read (or torch imported), then run."""
    from scan_viz.heads import all_head_params
    from scan_viz.io import STDOUT, check_output

    for param in all_head_params():
        if getattr(args, param.name, None) is not None:
            param.parse(getattr(args, param.name))
    names = getattr(args, "output_files", ())
    outputs = [getattr(args, name) for name in names]
    for name, path in zip(names, outputs):
        if path is not None:
            check_output(path, f"--{name}")  # before any work: a device, pipe or folder is refused at once
    args.stdout = sys.stdout
    if STDOUT not in outputs:
        return args.func(args)
    # the data alone goes to standard output; every message goes to standard error
    with contextlib.redirect_stdout(sys.stderr):
        return args.func(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(_checked, args)


if __name__ == "__main__":
    sys.exit(main())
