"""Two-stage search: stage 2 re-scores exactly as exhaustive search does, and stage 1 decides only who is re-ranked."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from test_stage1 import tiny_model

from scan_viz.errors import ScanVizError
from scan_viz.parts import model_fingerprint
from scan_viz.retrieval.search import EXACT_MAX, TwoStageSearch, build_index
from scan_viz.retrieval.stage1 import Stage1, Stage1Head

N_IMAGES, N_REGIONS = 40, 6
TEXT = "a red car on the grass"


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    model = tiny_model()
    rng = np.random.default_rng(0)
    features = rng.normal(size=(N_IMAGES, N_REGIONS, 16)).astype(np.float16)  # stored as a gallery stores them
    n_boxes = np.full(N_IMAGES, N_REGIONS)
    n_boxes[::3] = 4  # some images have padding rows
    torch.manual_seed(1)
    stage1 = Stage1(Stage1Head(32, 8), "tiny", model_fingerprint(model), 0.04, {5: 50.0}, 5)
    exhaustive = model.similarity(features.astype(np.float32), [TEXT], region_lengths=n_boxes)[:, 0]
    ids = [f"img{i:02d}" for i in range(N_IMAGES)]
    return model, features, n_boxes, stage1, exhaustive, ids


@pytest.mark.parametrize("chunk", [256, 5])
def test_stage2_scores_equal_exhaustive_scores_on_the_reranked_pairs(setup, monkeypatch, chunk):
    """... whether stage 2 scores its 12 candidates in one block or in blocks of 5 (STAGE2_CHUNK)."""
    model, features, n_boxes, stage1, exhaustive, ids = setup
    monkeypatch.setattr("scan_viz.retrieval.search.STAGE2_CHUNK", chunk)
    search = TwoStageSearch(model, ids, features, stage1, n_boxes=n_boxes)
    hits = search.search_text(TEXT, k=5, stage1_k=12)
    assert len(hits) == 5
    for hit in hits:
        assert hit.score == pytest.approx(float(exhaustive[ids.index(hit.id)]), abs=1e-5)
    # stage 1 by hand: pooled embeddings through the head, inner products, the 12 best
    regions = model.encode_images(features.astype(np.float32))
    image_vecs = stage1.image_vectors(regions, torch.from_numpy(n_boxes))
    caps = model.encode_captions([TEXT])
    query = stage1.caption_vectors(caps.emb, caps.lengths)[0]
    stage1_order = np.argsort(-(image_vecs @ query), kind="stable")[:12]
    candidates = {ids[i]: rank for rank, i in enumerate(stage1_order, 1)}
    expected = sorted(candidates, key=lambda image_id: -exhaustive[ids.index(image_id)])[:5]
    assert [h.id for h in hits] == expected
    assert [h.stage1_rank for h in hits] == [candidates[h.id] for h in hits]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_exhaustive_and_full_stage1_give_the_exhaustive_ranking(setup):
    model, features, n_boxes, stage1, exhaustive, ids = setup
    expected = [ids[i] for i in np.argsort(-exhaustive, kind="stable")[:7]]
    search = TwoStageSearch(model, ids, features, stage1, n_boxes=n_boxes)
    exhaustive_hits = search.search_text(TEXT, k=7, stage1_k=0)
    assert [h.id for h in exhaustive_hits] == expected
    assert all(h.stage1_rank is None for h in exhaustive_hits)
    everything = search.search_text(TEXT, k=7, stage1_k=N_IMAGES)
    assert [h.id for h in everything] == expected
    assert [h.score for h in everything] == pytest.approx([h.score for h in exhaustive_hits], abs=1e-5)
    # precomputed region embeddings give the same answer as encoding the candidates per query
    regions = model.encode_images(features.astype(np.float32))
    with_regions = TwoStageSearch(model, ids, features, stage1, n_boxes=n_boxes, regions=regions)
    expected_hits = search.search_text(TEXT, k=7, stage1_k=10)
    assert [h.id for h in with_regions.search_text(TEXT, k=7, stage1_k=10)] == [h.id for h in expected_hits]
    # ... and so do embeddings kept as an array on disk (a memory map in a large gallery)
    on_disk = TwoStageSearch(model, ids, features, stage1, n_boxes=n_boxes, regions=regions.numpy())
    assert [(h.id, h.stage1_rank) for h in on_disk.search_text(TEXT, k=7, stage1_k=10)] == \
        [(h.id, h.stage1_rank) for h in expected_hits]
    assert [h.id for h in on_disk.search_text(TEXT, k=7, stage1_k=0)] == expected


def test_float16_regions_are_scored_where_they_lie_as_their_widened_values(setup, tmp_path, monkeypatch):
    """Float16 region embeddings (a gallery's file, read once per query; an array or a tensor in memory) go to SCAN's
    float16 kernel path: the same hits and scores as the same numbers widened to float32 and scored chunk by chunk.
    A head without that path (CHAN) gets the widened rows."""
    from scan_viz.heads import native

    model, features, n_boxes, stage1, _, ids = setup
    half = model.encode_images(features.astype(np.float32)).half()
    np.save(tmp_path / "regions.npy", half.numpy())
    widened = TwoStageSearch(model, ids, features, stage1, n_boxes=n_boxes, regions=half.float())
    sources = {"file": np.load(tmp_path / "regions.npy", mmap_mode="r"), "array": half.numpy(), "tensor": half}
    calls = []
    kernel = native.pairs_forward_direct_half
    monkeypatch.setattr(native, "pairs_forward_direct_half", lambda *a, **k: calls.append(len(a[1])) or kernel(*a, **k))
    for name, source in sources.items():
        search = TwoStageSearch(model, ids, features, stage1, n_boxes=n_boxes, regions=source)
        for head in ("scan", "chan"):
            got = search.search_text(TEXT, k=7, stage1_k=20, head=head)
            want = widened.search_text(TEXT, k=7, stage1_k=20, head=head)
            assert [(h.id, h.stage1_rank) for h in got] == [(h.id, h.stage1_rank) for h in want], (name, head)
            assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-6), (name, head)
    kernel_built = native.library() is not None and hasattr(native.library(), "scan_pairs_forward_direct_half_f32")
    if kernel_built:
        assert calls == [20, 20, 20]  # SCAN, once per source, all 20 candidates in one call; CHAN never
    # a file is read a bounded number of rows at a time, whatever K is
    monkeypatch.setattr("scan_viz.retrieval.search.HALF_READ_CHUNK", 7)
    calls.clear()
    search = TwoStageSearch(model, ids, features, stage1, n_boxes=n_boxes, regions=sources["file"])
    got = search.search_text(TEXT, k=7, stage1_k=20)
    want = widened.search_text(TEXT, k=7, stage1_k=20)
    assert [(h.id, h.stage1_rank, h.score) for h in got] == [(h.id, h.stage1_rank, h.score) for h in want]
    assert calls == ([7, 7, 6] if kernel_built else [])


def test_gram_matrices_in_memory_give_the_same_hits(setup, tmp_path, monkeypatch):
    """With the regions' Gram matrices (``region_grams``) beside float16 regions in memory, SCAN's stage 2 passes
    them to the kernel and answers as without them, to float rounding. Gram matrices of another shape, on disk, or
    beside regions on disk or in float32 (which would never use them), are refused."""
    from scan_viz.heads import native
    from scan_viz.retrieval.tokens import region_grams

    model, features, n_boxes, stage1, _, ids = setup
    half = model.encode_images(features.astype(np.float32)).half()
    grams = region_grams(half, n_boxes)
    plain = TwoStageSearch(model, ids, features, stage1, n_boxes=n_boxes, regions=half)
    want = plain.search_text(TEXT, k=7, stage1_k=20)
    seen = []
    kernel = native.pairs_forward_direct_half
    monkeypatch.setattr(native, "pairs_forward_direct_half",
                        lambda *a, **k: seen.append(k.get("gram") is not None) or kernel(*a, **k))
    for regions, table in ((half, grams), (half.numpy(), torch.from_numpy(grams))):
        seen.clear()
        search = TwoStageSearch(model, ids, features, stage1, n_boxes=n_boxes, regions=regions, grams=table)
        got = search.search_text(TEXT, k=7, stage1_k=20)
        assert [(h.id, h.stage1_rank) for h in got] == [(h.id, h.stage1_rank) for h in want]
        assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-6)
        if native.library() is not None and hasattr(native.library(), "scan_pairs_forward_direct_half_gram_f32"):
            assert seen == [True]
    np.save(tmp_path / "regions.npy", half.numpy())
    np.save(tmp_path / "grams.npy", grams)
    for regions, table in ((half, grams[:, :3]), (np.load(tmp_path / "regions.npy", mmap_mode="r"), grams),
                           (half, np.load(tmp_path / "grams.npy", mmap_mode="r")), (half.float(), grams)):
        with pytest.raises(ScanVizError, match="Gram matrices are taken in memory"):
            TwoStageSearch(model, ids, features, stage1, n_boxes=n_boxes, regions=regions, grams=table)


def test_image_query_reranks_captions_with_exhaustive_scores(setup):
    model, features, n_boxes, stage1, _, ids = setup
    captions = ["a red car", "a dog on the grass", "a car", "the grass", "a red dog", "a dog"]
    search = TwoStageSearch(model, ids, features, stage1, n_boxes=n_boxes, captions=captions)
    scores = model.similarity(features[3:4, :n_boxes[3]].astype(np.float32), captions)[0]
    hits = search.search_image("img03", k=3, stage1_k=4)
    for hit in hits:
        assert hit.score == pytest.approx(float(scores[hit.id]), abs=1e-5)
    assert [h.id for h in search.search_image("img03", k=3, stage1_k=0)] == list(np.argsort(-scores, kind="stable")[:3])


def test_bad_requests_are_user_errors(setup):
    model, features, n_boxes, stage1, _, ids = setup
    search = TwoStageSearch(model, ids, features, stage1, n_boxes=n_boxes)
    with pytest.raises(ScanVizError, match="empty"):
        search.search_text("   ")
    with pytest.raises(ScanVizError, match="at least 1"):
        search.search_text(TEXT, k=0)
    with pytest.raises(ScanVizError, match="no image 'nope'"):
        search.search_image("nope")
    without = TwoStageSearch(model, ids, features, None)
    with pytest.raises(ScanVizError, match="--stage1-k 0"):
        without.search_text(TEXT, stage1_k=5)
    assert without.search_text(TEXT, k=3)[0].stage1_rank is None  # the default falls back to exhaustive
    with pytest.raises(ScanVizError, match="takes 16-d"):
        TwoStageSearch(model, ids, features[:, :, :8], stage1)


def test_ivf_index_probing_every_list_equals_the_exact_index():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:20] + 0.1
    exact = build_index(vectors, "auto")
    assert type(exact).__name__ == "IndexFlatIP" and 2000 <= EXACT_MAX
    ivf = build_index(vectors, "ivf")
    assert type(ivf).__name__ == "IndexIVFFlat"
    ivf.nprobe = ivf.nlist
    assert (ivf.search(queries, 10)[1] == exact.search(queries, 10)[1]).all()
    brute = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10]
    assert (exact.search(queries, 10)[1] == brute).all()
    with pytest.raises(ScanVizError, match="flat, ivf or auto"):
        build_index(vectors, "lsh")


def test_search_command_writes_json_and_rejects_bad_input(tmp_path, capsys):
    import json

    from app_fixture import app_fixture

    from scan_viz.cli import main
    from scan_viz.gallery import load_gallery
    from scan_viz.model import load_model
    from scan_viz.pipeline import GalleryIndex

    fixture = app_fixture()
    image_id = fixture.image_ids[2]
    sentence = fixture.captions[image_id][0]
    out = tmp_path / "hits.json"
    base = ["search", "--gallery", str(fixture.gallery), "--model", str(fixture.model)]
    assert main(base + ["--text", sentence, "-k", "3", "--json", str(out)]) == 0
    rows = json.loads(out.read_text(encoding="utf-8"))
    index = GalleryIndex.build(load_model(fixture.model), load_gallery(fixture.gallery))
    expected = index.search_images(sentence, 3)
    assert [r["id"] for r in rows] == [i for i, _ in expected]
    assert [r["score"] for r in rows] == pytest.approx([s for _, s in expected], abs=1e-5)
    assert all(r["stage1_rank"] is None for r in rows)  # the fixture model has no stage-1 head: exhaustive
    assert main(base + ["--image", image_id, "-k", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert [r["id"] for r in rows] == [c for c, _ in index.search_captions(image_id, 2)]
    capsys.readouterr()
    # the pooled stage 1 needs a stage-1 head (the token screen does not)
    for bad, message in ((["--text", sentence, "--stage1", "pooled", "--stage1-k", "5"], "--stage1-k 0"),
                         (["--text", sentence, "-k", "0"], "at least 1"),
                         (["--text", "  "], "empty"),
                         (["--image", "no_such_image"], "neither an image id")):
        assert main(base + bad + ["--json", str(tmp_path / "bad.json")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "bad.json").exists()


def test_search_command_prints_a_readable_table_and_json_to_stdout(tmp_path):
    """Without --json the results are printed one a line; ``--json -`` puts the JSON alone on stdout, the
    messages on stderr; a device path is refused before any work and stays what it was."""
    import json
    import subprocess
    import sys

    from app_fixture import app_fixture

    fixture = app_fixture()
    image_id = fixture.image_ids[2]
    sentence = fixture.captions[image_id][0]
    base = [sys.executable, "-m", "scan_viz.cli", "search", "--gallery", str(fixture.gallery), "--model",
            str(fixture.model)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    run = lambda *extra: subprocess.run(base + list(extra), capture_output=True, text=True, timeout=120,
                                        cwd=tmp_path, env=env)
    table = run("--text", sentence, "-k", "3")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.strip().splitlines()
    assert lines[0] == "3 results (exhaustive):" and len(lines) == 4
    assert lines[1].split()[0] == "1." and lines[1].split()[2] in fixture.image_ids
    as_json = run("--text", sentence, "-k", "3", "--json", "-")
    rows = json.loads(as_json.stdout)
    assert [r["id"] for r in rows] == [line.split()[2] for line in lines[1:]]
    assert "3 results" in as_json.stderr and not (tmp_path / "-").exists()
    captions = run("--image", image_id, "-k", "2")
    assert captions.returncode == 0 and f"[{captions.stdout.splitlines()[1].rsplit('[', 1)[1]}" .endswith("]")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for target in ("/dev/stdout", str(fifo), str(tmp_path)):
        refused = run("--text", sentence, "--json", target)
        assert refused.returncode == 2 and refused.stderr.startswith("error: --json ")
        assert "Traceback" not in refused.stderr and refused.stdout == ""
    assert not stat.S_ISREG(os.lstat("/dev/stdout").st_mode)  # the device link was not replaced by a file


def test_read_rows_equals_the_memmap_rows_without_mapping_them(tmp_path):
    """Stage 2 reads its candidates' rows from a float16 file with pread: the same values as indexing the map."""
    from scan_viz.regions.store import read_rows

    values = np.random.default_rng(0).standard_normal((40, 5, 6)).astype(np.float16)
    np.save(tmp_path / "regions.npy", values)
    mapped = np.load(tmp_path / "regions.npy", mmap_mode="r")
    for rows in (np.array([7, 0, 39, 7]), slice(3, 11), slice(0, 40, 9), np.array([], dtype=np.int64), slice(36, 50),
                 slice(39, 40), slice(5, 5), slice(None), np.array([3, 4, 5, 9, 10, 11, 2])):
        np.testing.assert_array_equal(read_rows(mapped, rows), values[rows])
    # scattered rows (a search's candidates) are announced to the kernel first: same values, in the asked order
    from scan_viz.regions.store import ANNOUNCE_RUNS

    many = np.random.default_rng(1).standard_normal((1000, 5, 6)).astype(np.float16)
    np.save(tmp_path / "many.npy", many)
    mapped = np.load(tmp_path / "many.npy", mmap_mode="r")
    for rows in (np.random.default_rng(2).permutation(1000)[:300], slice(0, 1000, 2),
                 np.r_[np.arange(0, 1000, 3), [5, 5, 999, 0]]):
        assert len(np.arange(1000)[rows]) >= ANNOUNCE_RUNS
        np.testing.assert_array_equal(read_rows(mapped, rows), many[rows])


def test_read_rows_reads_on_where_the_file_system_refuses_the_hint(tmp_path, monkeypatch):
    """Announcing rows is only a hint: where posix_fadvise fails (or the OS has none) the rows are read all the same."""
    from scan_viz.regions.store import read_rows

    many = np.random.default_rng(3).standard_normal((500, 4, 3)).astype(np.float16)
    np.save(tmp_path / "many.npy", many)
    mapped = np.load(tmp_path / "many.npy", mmap_mode="r")
    rows = np.random.default_rng(4).permutation(500)[:200]
    asked = []

    def refuse(fd, offset, length, advice):
        asked.append(offset)
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "posix_fadvise", refuse, raising=False)
    np.testing.assert_array_equal(read_rows(mapped, rows), many[rows])
    assert asked  # the hint was tried
    monkeypatch.delattr(os, "posix_fadvise")
    np.testing.assert_array_equal(read_rows(mapped, rows), many[rows])
