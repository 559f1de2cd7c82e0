"""What a visitor can make the server read: nothing outside the operator's folders, no devices or pipes, nothing
unbounded, and no message that repeats a file's content or names a path the visitor did not type.

Three layers: the loaders themselves (regular files only, sizes checked before reading, no content in messages),
:class:`scan_viz.safe_paths.AllowedRoots` behind the Model page's path form, and the upload path
(:mod:`scan_viz.app.user_files`). Every refusal is timed: a read of ``/dev/zero`` would not end, an open of a
named pipe would block, so each check runs in a thread that must answer within a second.
"""
from __future__ import annotations

import base64
import builtins
import gc
import io
import json
import os
import shutil
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from app_fixture import app_fixture
from scan_viz.app import models, state, user_files
from scan_viz.app.bundle import Sources, check_visitor_sources, load_bundle, load_detector_for
from scan_viz.app.user_files import Upload, stage_upload
from scan_viz.errors import ScanVizError
from scan_viz.safe_paths import ENV_ALLOWED_ROOTS, AllowedRoots
from test_app import APP, PAGES, TIMEOUT, no_exception, write_npz_regions

torch.set_num_threads(1)

SECRET = "SECRET-LINE-CONTENT"
FAST_S = 1.0


def refusal(action, seconds: float = FAST_S) -> str:
    """The ScanVizError message of ``action()``, which must come within ``seconds`` (run in a thread, so a blocked
    open of a pipe fails the test instead of hanging it)."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            action()
            outcome["result"] = "accepted"
        except ScanVizError as exc:
            outcome["error"] = str(exc)
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["result"] = repr(exc)

    start = time.perf_counter()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    elapsed = time.perf_counter() - start
    assert not worker.is_alive(), f"still running after {seconds} s: it is reading or blocked"
    assert "error" in outcome, f"not refused: {outcome.get('result')}"
    assert elapsed < seconds
    message = str(outcome["error"])
    assert SECRET not in message and "\n" not in message
    return message


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """Every path opened from now on (builtins.open, io.open, os.open), recorded."""
    paths: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def recording_open(file, *args, **kwargs):
        paths.append(os.fspath(file) if isinstance(file, (str, os.PathLike)) else repr(file))
        return real_open(file, *args, **kwargs)

    def recording_os_open(path, *args, **kwargs):
        paths.append(os.fspath(path))
        return real_os_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording_open)
    monkeypatch.setattr(io, "open", recording_open)
    monkeypatch.setattr(os, "open", recording_os_open)
    return paths


@pytest.fixture
def server_files(tmp_path):
    """An allowed root holding every kind of trap, and a folder outside it holding a secret."""
    root, outside = tmp_path / "shared", tmp_path / "private"
    root.mkdir()
    outside.mkdir()
    secret = outside / "secret.json"
    secret.write_text(json.dumps({"word2idx": {SECRET: 0}}))
    os.mkfifo(root / "pipe.json")
    (root / "link.json").symlink_to(secret)
    (root / "folder.json").mkdir()
    with open(root / "huge.pth.tar", "wb") as f:
        f.truncate(2 * 1024**3)  # sparse: 2 GB on paper, nothing on disk
    os.link(root / "huge.pth.tar", root / "huge.json")
    for name in ("with_pipe", "with_link", "with_device"):
        (root / name).mkdir()
        (root / name / "a.npz").write_text(SECRET)
    os.mkfifo(root / "with_pipe" / "b.npz")
    (root / "with_link" / "b.npz").symlink_to(secret)
    (root / "with_device" / "b.npz").symlink_to("/dev/zero")
    return root, outside


# ----------------------------------------------------------------------------- allowed roots


def test_allowed_roots_come_from_the_environment(tmp_path):
    assert AllowedRoots.from_env({}) is None
    assert AllowedRoots.from_env({ENV_ALLOWED_ROOTS: " "}) is None
    a, b = tmp_path / "a", tmp_path / "b"
    roots = AllowedRoots.from_env({ENV_ALLOWED_ROOTS: f"{a}{os.pathsep}relative{os.pathsep}{b}"})
    assert roots.roots == (os.path.realpath(a), os.path.realpath(b))  # a relative entry is ignored
    assert roots.contains(a / "x") and not roots.contains(tmp_path / "ab")  # a sibling sharing a prefix is out


@pytest.mark.parametrize(("kind", "name", "expected"), [
    ("vocab", "/dev/zero", "no such file"),
    ("vocab", "pipe.json", "not a regular file"),
    ("checkpoint", "/etc/shadow", "no such file"),
    ("vocab", "link.json", "no such file"),
    ("vocab", "../private/secret.json", "no such file"),
    ("vocab", "folder.json", "is a folder"),
    ("vocab", "huge.json", "over this server's 64 MB limit"),
    ("checkpoint", "huge.pth.tar", "over this server's 1,024 MB limit"),
    ("regions", "with_pipe", "b.npz is not a regular file"),
    ("regions", "with_link", "b.npz links outside"),
    ("images", "with_device", "b.npz links outside"),
])
def test_server_paths_are_refused_at_once_and_unread(server_files, opened, kind, name, expected):
    root, _ = server_files
    typed = name if name.startswith("/") else str(root / name)
    message = refusal(lambda: AllowedRoots.of(root).check(typed, kind))
    assert expected in message
    assert not [p for p in opened if p.startswith(str(root.parent)) or p.startswith("/dev") or p == "/etc/shadow"]


def test_outside_and_missing_paths_get_the_same_answer(server_files):
    root, outside = server_files
    roots = AllowedRoots.of(root)
    missing = refusal(lambda: roots.check(str(root / "nothing.json"), "vocab"))
    for typed in (str(outside / "secret.json"), str(outside / "nothing.json"), "/etc/shadow", "/etc",
                  str(root / "link.json"), str(root / ".." / "private" / "secret.json")):
        assert refusal(lambda: roots.check(typed, "vocab")) == missing


def test_allowed_files_and_folders_pass_as_their_real_paths(bundle, tmp_path):
    roots = AllowedRoots.of(bundle.root)
    for typed, kind in ((bundle.model / "vocab.json", "vocab"), (bundle.model, "checkpoint"),
                        (bundle.gallery, "gallery"), (bundle.gallery / "images", "images"),
                        (bundle.detector, "detector")):
        assert roots.check(str(typed), kind) == Path(os.path.realpath(typed))
    # what is served is the real path: a link inside the root to an allowed folder resolves to that folder
    (tmp_path / "alias").symlink_to(bundle.model, target_is_directory=True)
    assert AllowedRoots.of(tmp_path, bundle.root).check(str(tmp_path / "alias"), "checkpoint") == \
        Path(os.path.realpath(bundle.model))
    # the same files, with the folders shared one level lower, are refused
    assert "no such file" in refusal(lambda: AllowedRoots.of(bundle.gallery).check(str(bundle.model), "checkpoint"))


def test_visitor_sources_need_allowed_roots(bundle, monkeypatch):
    for name, value in bundle.env().items():
        monkeypatch.setenv(name, value)
    check_visitor_sources(Sources.from_env(), roots=None)  # the operator's own: always served
    typed = Sources.user_data(str(bundle.model), None, str(bundle.gallery / "regions"), str(bundle.gallery / "images"))
    with pytest.raises(ScanVizError, match="reading files on this server is off"):
        check_visitor_sources(typed, roots=None)
    check_visitor_sources(typed, roots=AllowedRoots.of(bundle.root))
    with pytest.raises(ScanVizError, match="Region features: no such file"):
        check_visitor_sources(typed, roots=AllowedRoots.of(bundle.model))


# ----------------------------------------------------------------------------- the loaders themselves


def test_loaders_refuse_devices_and_pipes_without_blocking(tmp_path, opened):
    from scan_viz.model.checkpoint import load_config
    from scan_viz.regions.store import load_npz_dir
    from scan_viz.text import Vocabulary

    os.mkfifo(tmp_path / "pipe.json")
    (tmp_path / "npz").mkdir()
    os.mkfifo(tmp_path / "npz" / "a.npz")
    assert "not a regular file" in refusal(lambda: Vocabulary.load("/dev/zero"))
    assert "not a regular file" in refusal(lambda: Vocabulary.load(tmp_path / "pipe.json"))
    assert "not a regular file" in refusal(lambda: load_config(tmp_path / "pipe.json"))
    assert "not a regular file" in refusal(lambda: load_npz_dir(tmp_path / "npz"))
    assert not [p for p in opened if "pipe" in p or p.endswith("a.npz") or p.startswith("/dev")]


def test_loader_messages_never_quote_the_file(tmp_path):
    from scan_viz.gallery import load_gallery
    from scan_viz.regions.store import load_bottomup_tsv, load_npz_dir
    from scan_viz.text import Vocabulary

    (tmp_path / "a.tsv").write_text(f"1\t{SECRET}\t10\t0\t\t\n")
    assert "a.tsv:1: image_w is not a non-negative integer" in refusal(lambda: load_bottomup_tsv(tmp_path / "a.tsv"))
    box, feature = (base64.b64encode(np.ones(n, np.float32).tobytes()).decode() for n in (4, 2))
    (tmp_path / "b.tsv").write_text(f"{SECRET}\t10\t10\t1\t{box}\t{feature}\n" * 2)
    assert "already read at" in refusal(lambda: load_bottomup_tsv(tmp_path / "b.tsv"))
    (tmp_path / "npz").mkdir()
    (tmp_path / "npz" / "x.npz").write_text(SECRET * 10)
    assert "x.npz is not a zip archive or it is damaged" in refusal(lambda: load_npz_dir(tmp_path / "npz"))
    (tmp_path / "vocab.json").write_text(json.dumps({"word2idx": {"<pad>": 0, "<start>": 1, "<end>": 2,
                                                                  "<unk>": 3, SECRET: "x"}}))
    assert "entry 5 of word2idx" in refusal(lambda: Vocabulary.load(tmp_path / "vocab.json"))
    (tmp_path / "gallery").mkdir()
    (tmp_path / "gallery" / "gallery.json").write_text(json.dumps({
        "format": "scan-viz-gallery/1", "images": [{"id": SECRET, "file": "../vocab.json", "captions": []}]}))
    assert "outside the gallery folder" in refusal(lambda: load_gallery(tmp_path / "gallery"))


def test_npz_that_would_decompress_past_the_cap_is_refused(tmp_path, monkeypatch):
    import scan_viz.regions.store as data

    np.savez_compressed(tmp_path / "a.npz", x=np.zeros((36, 2048), np.float32), bbox=np.zeros((36, 4), np.float32),
                        num_bbox=36, image_h=10, image_w=10)
    assert (tmp_path / "a.npz").stat().st_size < 100_000  # zeros compress: only the declared size tells
    monkeypatch.setattr(data, "MAX_NPZ_BYTES", 100_000)
    assert "a.npz decompresses to 296,152 bytes, over the 100,000 bytes limit" in refusal(lambda: data.load_npz_dir(tmp_path))


# ----------------------------------------------------------------------------- the Model page


@pytest.fixture
def app(bundle, monkeypatch) -> AppTest:
    for name, value in bundle.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(ENV_ALLOWED_ROOTS, raising=False)
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def page_text(at: AppTest) -> str:
    """Everything the page shows as text, tables included."""
    parts = [e.value for kind in ("title", "subheader", "markdown", "caption", "info", "success", "error", "warning")
             for e in getattr(at, kind)]
    parts += [str(t.value.to_dict()) for t in at.table]
    parts += [str(w.value) for w in at.text_input]
    return "\n".join(parts)


def test_path_form_is_off_by_default_and_no_server_path_is_shown(app, bundle):
    at = app.run()
    at.switch_page(PAGES["Model"]).run()
    no_exception(at)
    assert not at.text_input  # the bundled form has no gallery or detector path either
    at.segmented_control(key="md_kind").set_value(models.SERVER).run()
    no_exception(at)
    assert not at.text_input and not at.error
    assert any("SCAN_VIZ_ALLOWED_ROOTS=" in i.value and "Upload your own" in i.value for i in at.info)
    text = page_text(at)
    assert str(bundle.root) not in text and "/tmp" not in text
    # the card's cells and row labels are literal code spans (st.table renders Markdown)
    served = {k.strip("`"): v.strip("`") for k, v in at.table[-1].value.to_dict()["value"].items()}
    assert served["model"] == bundle.model.name and served["detector for uploads"] == bundle.detector.name


def test_sources_put_in_the_session_any_other_way_are_checked_too(app, bundle):
    """The check sits where every page loads its bundle, not only behind the form: the model is the operator's own
    and passes, the regions folder is a server path and is refused."""
    app.session_state[state.SOURCES_KEY] = Sources.user_data(str(bundle.model), None, str(bundle.gallery / "regions"),
                                                             str(bundle.gallery / "images"))
    at = app.run()
    no_exception(at)
    message = at.error[0].value.strip("` ")  # shown as a literal code span
    assert len(at.error) == 1 and message.startswith("Region features: reading files on this server is off")
    assert not at.get("metric") and str(bundle.root) not in page_text(at)


def test_path_form_with_allowed_roots_refuses_traps_quickly(app, bundle, server_files, monkeypatch):
    root, outside = server_files
    monkeypatch.setenv(ENV_ALLOWED_ROOTS, str(root))
    (root / "model").symlink_to(bundle.model, target_is_directory=True)  # a link out of the root
    at = app.run()
    at.switch_page(PAGES["Model"]).run()
    at.segmented_control(key="md_kind").set_value(models.SERVER).run()
    assert at.text_input(key="md_checkpoint").value == ""  # never prefilled with a server path

    def submit(checkpoint: str, vocab: str) -> str:
        at.text_input(key="md_checkpoint").input(checkpoint)
        at.text_input(key="md_vocab").input(vocab)
        at.text_input(key="md_regions").input(str(root / "with_pipe"))
        at.text_input(key="md_images").input(str(root))
        at.form_submit_button[0].click().run(timeout=30)
        no_exception(at)
        assert len(at.error) == 1
        return at.error[0].value.strip("` ")  # shown as a literal code span

    messages = [submit("/etc/shadow", "/dev/zero"), submit(str(root / "nothing.pth.tar"), "/dev/zero"),
                submit(str(root / "model"), str(root / "pipe.json")),
                submit(str(outside / "secret.json"), str(root / "pipe.json"))]
    assert len(set(messages)) == 1 and messages[0].startswith("Checkpoint: no such file")
    shutil.copytree(bundle.model, root / "copy")
    messages = [submit(str(root / "copy"), str(root / "pipe.json")), submit(str(root / "copy"), "/dev/zero"),
                submit(str(root / "copy"), str(root / "copy" / "vocab.json"))]
    assert messages[0] == "Vocabulary JSON is not a regular file (a device, pipe or socket): give a file"
    assert messages[1].startswith("Vocabulary JSON: no such file")
    assert messages[2].startswith("Region features: b.npz is not a regular file")
    assert not any(SECRET in m or str(outside) in m for m in messages)


# ----------------------------------------------------------------------------- uploads


def upload_files(bundle, folder: Path, n_images: int = 4) -> dict[str, list[Upload]]:
    """The fixture model as an official checkpoint + vocab, its regions as .npz, and its images, as uploads."""
    from scan_viz.model import load_model
    from scan_viz.model.checkpoint import write_official_checkpoint

    model = load_model(bundle.model)
    write_official_checkpoint(folder / "model_best.pth.tar", model.config, model.image_encoder.state_dict(),
                              model.text_encoder.state_dict())
    model.vocab.save(folder / "vocab.json")
    ids = list(bundle.image_ids[:n_images])
    write_npz_regions(bundle, folder / "npz", ids)

    def read(path: Path) -> Upload:
        return Upload(path.name, path.read_bytes())

    return {"checkpoint": [read(folder / "model_best.pth.tar")], "vocab": [read(folder / "vocab.json")],
            "regions": [read(folder / "npz" / f"{i}.npz") for i in ids],
            "images": [read(bundle.gallery / "images" / f"{i}.jpg") for i in ids]}


def stage(folder: Path, files: dict[str, list[Upload]]) -> Sources:
    return stage_upload(folder, files["checkpoint"], (files["vocab"] or [None])[0], files["regions"], files["images"])


def test_an_upload_serves_the_visitor_and_no_one_else(bundle, tmp_path, monkeypatch):
    from scan_viz.model import load_model
    from scan_viz.pipeline import gallery_regions

    for name, value in bundle.env().items():
        monkeypatch.setenv(name, value)
    files = upload_files(bundle, tmp_path)
    folder = tmp_path / "session"
    folder.mkdir()
    sources = stage(folder, files)
    assert sources.model_label() == "your upload (model_best.pth.tar)" and str(folder) not in sources.model_label()
    check_visitor_sources(sources, roots=None, uploads=AllowedRoots.of(folder))  # its own session
    with pytest.raises(ScanVizError, match="reading files on this server is off"):
        check_visitor_sources(sources, roots=None, uploads=AllowedRoots.of(tmp_path / "another-session"))
    served = load_bundle(sources)
    assert served.gallery.ids == sorted(bundle.image_ids[:4])
    text = bundle.captions[bundle.image_ids[1]][0]
    reference = load_model(bundle.model)
    features = gallery_regions(served.gallery, bundle.image_ids[1]).features
    assert served.model.align(features, text).score == pytest.approx(reference.align(features, text).score, abs=1e-6)


def test_uploads_are_checked_before_anything_is_written(bundle, tmp_path, monkeypatch):
    files = upload_files(bundle, tmp_path)
    folder = tmp_path / "session"
    folder.mkdir()
    bad_name = [Upload("../evil.jpg", b"x"), *files["images"][1:]]
    cases = [
        ({**files, "images": bad_name}, "image file 1: name it with letters"),
        ({**files, "images": [Upload("a b.jpg", b"x")]}, "image file 1: name it with letters"),
        ({**files, "vocab": []}, "needs its vocabulary"),
        ({**files, "regions": [*files["regions"], Upload("x.tsv", b"")]}, "either .tsv or .npz"),
        ({**files, "checkpoint": [Upload("model.safetensors", b"")]}, "config.json and model.safetensors"),
        ({**files, "images": files["images"] * 2}, "same name as another one"),
        ({**files, "regions": []}, "upload the region features"),
    ]
    for upload, expected in cases:
        with pytest.raises(ScanVizError, match=expected):
            stage(folder, upload)
        assert not any(folder.iterdir())
    monkeypatch.setattr(user_files, "MAX_REGIONS_MB", 0)
    with pytest.raises(ScanVizError, match="over the 0 MB limit"):
        stage(folder, files)
    assert not any(folder.iterdir())


def test_a_visitor_model_may_name_only_a_bundled_detector(bundle, tmp_path, monkeypatch):
    from scan_viz.model import load_model

    for name, value in bundle.env().items():
        monkeypatch.setenv(name, value)
    model = load_model(bundle.model)  # its config names the fixture detector by absolute path
    visitor = Sources(model=str(tmp_path / "model_best.pth.tar"), gallery=None, regions="r", images="i")
    with pytest.raises(ScanVizError, match="not one of the bundled ones"):
        load_detector_for(model, visitor)
    assert load_detector_for(model, Sources.from_env()) is not None  # the operator's model: its own detector


def test_a_broken_operator_detector_is_one_generic_line_and_a_log_entry(bundle, tmp_path, monkeypatch, caplog):
    from scan_viz.model import load_model

    broken = tmp_path / "operator-only" / "detector"
    broken.mkdir(parents=True)
    for name, value in {**bundle.env(), "SCAN_VIZ_DETECTOR": str(broken)}.items():
        monkeypatch.setenv(name, value)
    with caplog.at_level("ERROR", logger="scan_viz.app.bundle"), pytest.raises(ScanVizError) as refused:
        load_detector_for(load_model(bundle.model), Sources.from_env())
    assert str(refused.value) == "the server's detector could not be loaded; the operator's log has the details"
    assert str(broken) in caplog.text
    typed = Sources(model=str(bundle.model), gallery=str(bundle.gallery), detector=str(tmp_path / "theirs"))
    with pytest.raises(ScanVizError, match="theirs"):  # a detector the visitor named: the reason is theirs
        load_detector_for(load_model(bundle.model), typed)


def test_upload_folder_is_private_and_removed_with_the_session():
    folder = state.UploadFolder()
    path = folder.path
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    (path / "x").write_bytes(b"data")
    del folder
    gc.collect()
    assert not path.exists()
    folder = state.UploadFolder()
    folder.discard()
    assert not folder.path.exists()


def test_a_visitor_who_names_a_server_path_is_told_how_the_operator_turns_paths_on(bundle):
    typed = Sources.user_data(str(bundle.model), None, str(bundle.gallery / "regions"), str(bundle.gallery / "images"))
    with pytest.raises(ScanVizError) as refused:
        check_visitor_sources(typed, roots=None)
    message = str(refused.value)
    assert "reading files on this server is off" in message and "SCAN_VIZ_ALLOWED_ROOTS" in message
    assert "\n" not in message and str(bundle.root) not in message  # one line, no server path echoed
