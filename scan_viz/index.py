"""``scan-viz index``: a folder of raw images -> a gallery (regions, stage-1 vectors), resumable, on Ray or not.

    images/ --detector--> regions --SCAN encoders + stage-1 head--> image vectors --> gallery folder

Work happens in a work folder beside the output (``.{name}.index-work``): images are processed in chunks, each
chunk saved atomically, so an interrupted run (even SIGKILL) resumes where it stopped. Only when every image is
done is the gallery assembled in a temporary folder and swapped in place of the old one: the old gallery stays
whole until then. Images already in the output gallery (same id = file stem) are kept, not redone. An image
that cannot be read or decoded is listed in ``index_report.json`` (and on stderr) and skipped.

With ``ray`` set, the chunks are computed by Ray Data (``map_batches`` over actors that each load the detector
and model once); the driver saves them exactly as the local path does, so both paths give the same gallery.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from scan_viz.errors import ScanVizError
from scan_viz.regions.images import list_images

REPORT_FILE = "index_report.json"
CHUNK_PREFIX = "chunk_"
DEFAULT_CHUNK = 16


def read_captions_file(path: Path) -> dict[str, list[str]]:
    """``image_id<TAB>caption`` per line (UTF-8; blank lines skipped) -> {image_id: [captions]}."""
    from scan_viz.regions.store import read_lines
    from scan_viz.safe_paths import MAX_JSON_BYTES

    lines = read_lines(path, "captions", MAX_JSON_BYTES)
    captions: dict[str, list[str]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        image_id, sep, text = line.partition("\t")
        if not sep or not text.strip() or not image_id.strip():
            raise ScanVizError(f"{path}: line {number} is not 'image_id<TAB>caption'")
        captions.setdefault(image_id.strip(), []).append(text.strip())
    return captions


# ---------------------------------------------------------------------------------------- the work itself
@dataclasses.dataclass(frozen=True)
class IndexSpec:
    """What every worker needs to rebuild the same detector and model (plain strings: it travels to Ray)."""

    model: str
    detector: str | None = None


class ChunkProcessor:
    """Loads the detector, model and stage-1 head once; turns a batch of image paths into regions + vectors."""

    def __init__(self, spec: IndexSpec) -> None:
        import torch

        from scan_viz.model import load_model
        from scan_viz.pipeline import detector_for
        from scan_viz.retrieval.stage1 import find_stage1

        torch.set_num_threads(1)
        self.model = load_model(spec.model)
        self.detector = detector_for(self.model, spec.detector)
        self.stage1 = find_stage1(self.model)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """batch: {"id": (b,), "path": (b,)} -> per image: features, boxes, size, labels (JSON), error ('' if ok)."""
        from scan_viz.detect import extract_regions
        from scan_viz.regions.images import load_image

        ids, paths = [str(i) for i in batch["id"]], [str(p) for p in batch["path"]]
        images, errors = [], []
        for path in paths:
            try:
                images.append(load_image(path))
                errors.append("")
            except ScanVizError as exc:
                images.append(None)
                errors.append(str(exc))
        good = [i for i, image in enumerate(images) if image is not None]
        regions = extract_regions(self.detector, [images[i] for i in good]) if good else []
        n_reg, dim = 36, self.model.config.img_dim
        if regions:
            n_reg = regions[0].features.shape[0]
        features = np.zeros((len(ids), n_reg, dim), dtype=np.float32)
        boxes = np.zeros((len(ids), n_reg, 4), dtype=np.float32)
        sizes = np.zeros((len(ids), 2), dtype=np.int64)
        labels = [""] * len(ids)
        for i, r in zip(good, regions):
            features[i], boxes[i], sizes[i] = r.features, r.boxes, r.image_size
            labels[i] = json.dumps(r.labels)
        out = {"id": np.array(ids, dtype=object), "path": np.array(paths, dtype=object), "features": features,
               "boxes": boxes, "size": sizes, "labels": np.array(labels, dtype=object),
               "error": np.array(errors, dtype=object)}
        if self.stage1 is not None:
            vectors = np.zeros((len(ids), self.stage1.head.dim), dtype=np.float32)
            if good:
                vectors[good] = self.stage1.image_vectors(self.model.encode_images(features[good]))
            out["vectors"] = vectors
        return out


def _batches(todo: list[tuple[str, Path]], size: int) -> Iterator[dict[str, Any]]:
    for start in range(0, len(todo), size):
        part = todo[start:start + size]
        yield {"id": np.array([i for i, _ in part], dtype=object), "path": np.array([str(p) for _, p in part],
                                                                                     dtype=object)}


def _local(spec: IndexSpec, todo: list[tuple[str, Path]], chunk: int) -> Iterator[dict[str, Any]]:
    processor = ChunkProcessor(spec)
    for batch in _batches(todo, chunk):
        yield processor(batch)


def _on_ray(spec: IndexSpec, todo: list[tuple[str, Path]], chunk: int, address: str,
            workers: int) -> Iterator[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise ScanVizError("--ray needs Ray Data: pip install 'ray[data]'") from None
    if not ray.is_initialized():
        try:
            # "auto": the cluster this machine belongs to, else a new local one
            ray.init(address=None if address == "auto" else address, include_dashboard=False,
                     log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ScanVizError(f"cannot reach the Ray cluster at {address!r}: {str(exc).splitlines()[0]}") from None
    items = [{"id": i, "path": str(p)} for i, p in todo]
    dataset = ray.data.from_items(items).map_batches(
        ChunkProcessor, fn_constructor_args=(spec,), batch_size=chunk, batch_format="numpy", num_cpus=1,
        concurrency=workers)
    yield from dataset.iter_batches(batch_size=None, batch_format="numpy")


# -------------------------------------------------------------------------------------- chunk bookkeeping
def _save_chunk(work: Path, number: int, result: dict[str, Any]) -> None:
    from scan_viz.io import atomic_path

    with atomic_path(work / f"{CHUNK_PREFIX}{number:06d}.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{k: (v.astype(str) if v.dtype == object else v) for k, v in result.items()})


def _read_chunks(work: Path) -> Iterable[dict[str, np.ndarray]]:
    for path in sorted(work.glob(f"{CHUNK_PREFIX}*.npz")):
        with np.load(path, allow_pickle=False) as data:
            yield {k: data[k] for k in data.files}


def _work_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.index-work"


@dataclasses.dataclass
class IndexResult:
    gallery: Path
    added: int
    kept: int
    failed: list[dict[str, str]]


def index_images(images_dir: str | Path, out: str | Path, model: str = "scan-emoji-t2i",
                 captions: str | Path | None = None, detector: str | None = None, ray: str | None = None,
                 workers: int = 2, chunk: int = DEFAULT_CHUNK,
                 progress: Callable[[int, int], None] | None = None) -> IndexResult:
    """Index the images of ``images_dir`` into the gallery ``out`` (created, or extended when it exists)."""
    from scan_viz.gallery import GALLERY_FILE, load_gallery

    images_dir, out = Path(images_dir), Path(out)
    files = list_images(images_dir)
    caption_map = read_captions_file(Path(captions)) if captions else {}
    old = load_gallery(out) if (out / GALLERY_FILE).is_file() else None
    kept_ids = set(old.ids) if old is not None else set()
    work = _work_dir(out)
    work.mkdir(parents=True, exist_ok=True)
    spec_file, spec_text = work / "spec.json", json.dumps({"model": str(model), "detector": detector})
    if spec_file.is_file() and spec_file.read_text(encoding="utf-8") != spec_text:
        raise ScanVizError(f"{work} holds an interrupted run made with {spec_file.read_text(encoding='utf-8')}: "
                           "resume it with the same --model/--detector, or delete that folder to start over")
    spec_file.write_text(spec_text, encoding="utf-8")
    done = {str(i) for c in _read_chunks(work) for i in c["id"]}
    todo = [(p.stem, p) for p in files if p.stem not in kept_ids and p.stem not in done]
    total = len(todo)
    spec = IndexSpec(str(model), None if detector is None else str(detector))
    number = len(list(work.glob(f"{CHUNK_PREFIX}*.npz")))
    finished = 0
    if todo:
        results = _on_ray(spec, todo, chunk, ray, workers) if ray else _local(spec, todo, chunk)
        for result in results:
            _save_chunk(work, number, result)
            number += 1
            finished += len(result["id"])
            if progress is not None:
                progress(finished, total)
    result = _assemble(out, old, files, work, caption_map, spec)
    shutil.rmtree(work, ignore_errors=True)
    return result


def _assemble(out: Path, old, files: list[Path], work: Path, caption_map: dict[str, list[str]],
              spec: IndexSpec) -> IndexResult:
    """Old gallery rows + every saved chunk -> one new gallery folder, swapped in atomically."""
    from scan_viz.gallery import GALLERY_FILE, LABELS_FILE, REGIONS_DIR, gallery_header
    from scan_viz.io import write_dir_atomic
    from scan_viz.regions.store import RegionStore, save_regions

    chunks = list(_read_chunks(work))
    new_rows: dict[str, tuple[int, int]] = {}
    failed = []
    for c, data in enumerate(chunks):
        for j, (image_id, error) in enumerate(zip(data["id"], data["error"])):
            if error:
                failed.append({"file": Path(str(data["path"][j])).name, "error": str(error)})
            else:
                new_rows[str(image_id)] = (c, j)
    old_ids = [] if old is None else list(old.ids)
    order = old_ids + [p.stem for p in files if p.stem in new_rows]
    if not order:
        raise ScanVizError("none of the images could be read, so there is no gallery to write: see the errors above")
    source = {p.stem: p for p in files}
    dims = {d["features"].shape[1:] for d in chunks if (d["error"] == "").any()} | \
        ({old.regions.features.shape[1:]} if old is not None else set())
    if len(dims) > 1:
        raise ScanVizError(f"{out} was indexed with other region features {sorted(dims)}: index into a new gallery "
                           "or use the same model and detector")
    n_reg, img_dim = next(iter(dims))
    features = np.zeros((len(order), n_reg, img_dim), dtype=np.float32)
    boxes = np.zeros((len(order), n_reg, 4), dtype=np.float32)
    sizes = np.zeros((len(order), 2), dtype=np.int64)
    labels: list[list[str]] = []
    has_vectors = all("vectors" in d for d in chunks)
    vectors = []
    records = []
    for row, image_id in enumerate(order):
        if image_id in new_rows:
            c, j = new_rows[image_id]
            d = chunks[c]
            features[row], boxes[row], sizes[row] = d["features"][j], d["boxes"][j], d["size"][j]
            labels.append(json.loads(str(d["labels"][j])))
            if has_vectors:
                vectors.append(d["vectors"][j])
            suffix = source[image_id].suffix.lower()
            record = {"id": image_id, "file": f"images/{image_id}{suffix}", "width": int(sizes[row, 0]),
                      "height": int(sizes[row, 1]), "captions": []}
        else:
            i = old.index_of(image_id)
            features[row] = old.regions.features[i]
            boxes[row] = old.regions.boxes[i]
            sizes[row] = (old.records[i]["width"], old.records[i]["height"])
            labels.append(old.region_labels[i] if old.region_labels is not None else [""] * n_reg)
            record = dict(old.records[i])
        if image_id in caption_map:
            record["captions"] = [{"text": t} for t in caption_map[image_id]]
        records.append(record)
    store = RegionStore(ids=order, features=features, boxes=boxes, image_sizes=sizes)
    stage1_vectors = _stage1_vectors(spec, old, order, new_rows, vectors) if has_vectors else None
    token_index, region_embeddings = _token_index(spec, store)

    def write(tmp: Path) -> None:
        (tmp / "images").mkdir()
        for record in records:
            target = tmp / record["file"]
            origin = (old.root / record["file"]) if record["id"] not in new_rows else source[record["id"]]
            try:
                os.link(origin, target)
            except OSError:
                shutil.copyfile(origin, target)
        meta = {**gallery_header(out.name), "images": records,
                "indexed_with": {"model": spec.model, "detector": spec.detector}}
        (tmp / GALLERY_FILE).write_text(json.dumps(meta, separators=(",", ":")), encoding="utf-8")
        save_regions(store, tmp / REGIONS_DIR, feature_dtype="float16")
        (tmp / REGIONS_DIR / LABELS_FILE).write_text(json.dumps(labels, separators=(",", ":")), encoding="utf-8")
        report = {"images": len(order), "added": len(new_rows), "kept": len(old_ids), "failed": failed}
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if stage1_vectors is not None:
            stage1, vecs = stage1_vectors
            from scan_viz.retrieval.search import save_image_vectors

            save_image_vectors(tmp, stage1, vecs)
        from scan_viz.retrieval.tokens import TOKENS_DIR, save_region_embeddings

        token_index.save(tmp / TOKENS_DIR)
        save_region_embeddings(tmp / TOKENS_DIR, region_embeddings)

    write_dir_atomic(out, write)
    return IndexResult(out, len(new_rows), len(old_ids), failed)


def _stage1_vectors(spec: IndexSpec, old, order: list[str], new_rows: dict, new_vectors: list):
    """(stage-1 head, vectors of every gallery row): stored ones for old rows when the same head made them."""
    from scan_viz.model import load_model
    from scan_viz.retrieval.search import load_image_vectors
    from scan_viz.retrieval.stage1 import find_stage1

    model = load_model(spec.model)
    stage1 = find_stage1(model)
    if stage1 is None:
        return None
    old_vectors = None
    if old is not None:
        old_vectors = load_image_vectors(old.root, stage1, len(old))
        if old_vectors is None:  # made by another head: re-encode the old rows (no detection needed)
            old_vectors = stage1.image_vectors(model.encode_images(np.asarray(old.regions.features)))
    rows = iter(new_vectors)
    vectors = [old_vectors[old.index_of(i)] if i not in new_rows else next(rows) for i in order]
    return stage1, np.stack(vectors)


def _token_index(spec: IndexSpec, store):
    """The gallery's token-level stage-1 index (scan_viz.retrieval.tokens) over every row's region embeddings, and
    those embeddings (float16), which the gallery keeps next to the index for stage 2."""
    import torch

    from scan_viz.model import load_model
    from scan_viz.retrieval.tokens import TokenIndex, token_settings

    model = load_model(spec.model)
    features = store.features
    # from the features as the gallery stores them (float16), so the index and the stored embeddings are those of
    # the features every later reader sees
    regions = torch.cat([model.encode_images(np.asarray(features[s:s + 2048], dtype=np.float16).astype(np.float32))
                         .half() for s in range(0, len(features), 2048)])
    return TokenIndex.build(regions, store.n_boxes, **token_settings(model)), regions
