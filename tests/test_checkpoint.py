"""Official checkpoints (Python 2 legacy files made by ``official_format``), safe loading, and model directories."""
from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import pickletools
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
import official_format as of  # noqa: E402
from scan_viz.errors import ScanVizError  # noqa: E402
from scan_viz.heads import head_settings  # noqa: E402
from scan_viz.model.checkpoint import (OfficialCheckpoint, convert_official, image_state_shapes,  # noqa: E402
                                       load_model_dir, load_official_checkpoint, save_model_dir, text_state_shapes,
                                       write_official_checkpoint)
from scan_viz.model.config import ScanConfig  # noqa: E402

SMALL = dict(img_dim=12, embed_size=8, word_dim=6, vocab_size=10)


def small_config(**changes) -> ScanConfig:
    return ScanConfig(**{**SMALL, "bi_gru": True, **changes})


def states_for(config: ScanConfig, seed: int = 0) -> tuple[dict, dict]:
    return of.random_states(config.to_dict(), seed)


def assert_states_equal(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for key in want:
        assert got[key].dtype == torch.float32 and got[key].is_contiguous()
        assert torch.equal(got[key], want[key].reshape(got[key].shape)), key


def write_vocab(path: Path, n_words: int) -> Path:
    words = ["<pad>", "<start>", "<end>", "<unk>"] + [f"w{i}" for i in range(n_words - 4)]
    path.write_text(json.dumps({"word2idx": {w: i for i, w in enumerate(words)},
                                "idx2word": {str(i): w for i, w in enumerate(words)}, "idx": n_words}))
    return path


# --- Python 2.7 / PyTorch 0.3-0.4 files from a CUDA machine ------------------------------------------------------


def main_pickle_ops(path: Path) -> list[tuple[str, object]]:
    """Opcodes (name, argument) of the checkpoint object's pickle: the 4th pickle of a legacy file."""
    stream = io.BytesIO(path.read_bytes())
    for _ in range(3):
        pickle.load(stream)
    return [(op.name, arg) for op, arg, _ in pickletools.genops(stream)]


def test_py2_file_has_python2_opcodes_and_cuda_storages(tmp_path):
    opt = of.official_opt()
    path = tmp_path / "model_best.pth.tar"
    of.write_py2_checkpoint(path, opt, *of.random_states(opt))
    ops = main_pickle_ops(path)
    binstrings = {arg for name, arg in ops if name == "SHORT_BINSTRING"}
    # pickletools shows SHORT_BINSTRING arguments decoded as latin1
    assert {"f30k_precomp", "clipped_l2norm", "LogSumExp", "t2i", "/home/caf\xe9/data", "fc.weight"} <= binstrings
    assert not any(name in ("BINUNICODE", "SHORT_BINBYTES", "BINBYTES") for name, _ in ops)
    assert ("GLOBAL", "_codecs encode") not in ops
    assert ("GLOBAL", "torch.cuda FloatStorage") in ops and ("GLOBAL", "argparse Namespace") in ops
    assert "cuda:0" in binstrings and "cpu" not in binstrings
    assert path.read_bytes()[:2] == b"\x80\x02"  # legacy layout, not a zip


@pytest.mark.parametrize("bi_gru,num_layers,precomp_enc_type,torch_version", [
    (True, 1, "basic", "0.3"),
    (False, 1, "basic", "0.3"),
    (True, 2, "basic", "0.4"),
    (False, 2, "weight_norm", "0.4"),
    (True, 1, "weight_norm", "0.3"),
])
def test_py2_cuda_checkpoint_loads_on_cpu(tmp_path, bi_gru, num_layers, precomp_enc_type, torch_version):
    opt = of.official_opt(bi_gru=bi_gru, num_layers=num_layers, precomp_enc_type=precomp_enc_type,
                          cross_attn="i2t", agg_func="Mean", lambda_softmax=4.0, lambda_lse=5.0)
    g_shape = (1,) if torch_version == "0.3" else ()  # 0.3's Variable.norm() had shape (1,)
    image, text = of.random_states(opt, seed=3, g_shape=g_shape)
    path = tmp_path / "model_best.pth.tar"
    of.write_py2_checkpoint(path, opt, image, text, torch_version=torch_version)

    ckpt = load_official_checkpoint(path)

    assert isinstance(ckpt, OfficialCheckpoint)
    config = ckpt.config
    assert (config.bi_gru, config.num_layers, config.precomp_enc_type) == (bi_gru, num_layers, precomp_enc_type)
    assert (config.img_dim, config.embed_size, config.word_dim, config.vocab_size) == (12, 8, 6, 10)
    # the official attention settings are filed under the SCAN head's settings, nowhere else
    assert config.head == "scan" and config.head_params == {"cross_attn": "i2t", "agg_func": "Mean",
                                                            "raw_feature_norm": "clipped_l2norm",
                                                            "lambda_softmax": 4.0, "lambda_lse": 5.0}
    assert config.max_violation is True
    assert config.data_name == "f30k_precomp" and type(config.data_name) is str
    assert config.extra["data_path"] == "/home/caf\xe9/data"
    assert config.extra["logger_name"] == "./runs/f30k_scan/log"
    assert (ckpt.epoch, ckpt.best_rsum, ckpt.eiters) == (7, 412.5, 31000)
    assert_states_equal(ckpt.image_state, image)
    assert_states_equal(ckpt.text_state, text)
    if precomp_enc_type == "weight_norm":
        assert ckpt.image_state["fc.weight_g"].shape == ()
    # the GRU weights were views of one cuDNN buffer; the loaded ones own their memory
    pointers = {t.untyped_storage().data_ptr() for t in ckpt.text_state.values()}
    assert len(pointers) == len(ckpt.text_state)


def test_opt_as_plain_dict_and_missing_vocab_size(tmp_path):
    opt = of.official_opt()
    image, text = of.random_states(opt)
    del opt["vocab_size"]
    path = tmp_path / "ckpt.pth.tar"
    of.write_py2_checkpoint(path, opt, image, text, opt_as_dict=True)
    ckpt = load_official_checkpoint(path)
    assert ckpt.config.vocab_size == 10
    assert_states_equal(ckpt.text_state, text)


def test_forks_without_architecture_options_are_inferred_from_weights(tmp_path):
    opt = of.official_opt(num_layers=2, bi_gru=True, precomp_enc_type="weight_norm")
    image, text = of.random_states(opt)
    for name in ("num_layers", "bi_gru", "precomp_enc_type", "img_dim", "embed_size", "word_dim", "vocab_size"):
        del opt[name]
    path = tmp_path / "ckpt.pth.tar"
    of.write_py2_checkpoint(path, opt, image, text)
    config = load_official_checkpoint(path).config
    assert (config.num_layers, config.bi_gru, config.precomp_enc_type) == (2, True, "weight_norm")
    assert (config.img_dim, config.embed_size, config.word_dim, config.vocab_size) == (12, 8, 6, 10)


# --- refusing code ---------------------------------------------------------------------------------------------


class _SystemPayload:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _ExecPayload:
    def __init__(self, marker: Path) -> None:
        self.code = f"open({str(marker)!r}, 'w').write('pwned')"

    def __reduce__(self):
        return (exec, (self.code,))


class CustomClass:
    """Not a tensor, not a Namespace: a class the loader must not import."""

    def __setstate__(self, state):
        Path(state["marker"]).write_text("pwned")


def _refused(path: Path, type_name: str) -> None:
    with pytest.raises(ScanVizError) as info:
        load_official_checkpoint(path)
    message = str(info.value)
    # the file is named as the user named it, never by its folder (an upload sits in a server folder)
    assert message.startswith(f"refusing to load {path.name}:") and "could run code" in message
    assert type_name in message and "\n" not in message


@pytest.mark.parametrize("legacy", [True, False])
def test_torch_file_with_os_system_is_refused(tmp_path, legacy):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth.tar"
    torch.save({"model": [], "opt": _SystemPayload(f"touch {marker}")}, path,
               _use_new_zipfile_serialization=not legacy)
    _refused(path, "posix.system" if os.name == "posix" else "system")
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [True, False])
def test_torch_file_with_builtins_exec_is_refused(tmp_path, legacy):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth.tar"
    torch.save({"epoch": 1, "x": _ExecPayload(marker)}, path, _use_new_zipfile_serialization=not legacy)
    _refused(path, "builtins.exec")
    assert not marker.exists()


def test_py2_file_with_eval_and_popen_is_refused(tmp_path):
    marker = tmp_path / "marker"
    for name, (module, func, args) in {
        "eval": ("__builtin__", "eval", (f"open({str(marker)!r}, 'w')".encode(),)),
        "popen": ("subprocess", "Popen", ((b"touch", str(marker).encode()),)),
    }.items():
        path = tmp_path / f"{name}.pth.tar"
        of.write_py2_legacy_file(path, {b"model": of.Reduce(of.Global(module, func), args)})
        _refused(path, "builtins.eval" if name == "eval" else "subprocess.Popen")
    assert not marker.exists()


def test_plain_pickle_with_payload_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(_SystemPayload(f"touch {marker}"), protocol=2))
    _refused(path, "system")
    # protocol 5 uses opcodes torch's safe unpickler rejects outright: not a checkpoint
    path.write_bytes(pickle.dumps(_SystemPayload(f"touch {marker}"), protocol=5))
    with pytest.raises(ScanVizError, match="not a PyTorch checkpoint"):
        load_official_checkpoint(path)
    assert not marker.exists()


def test_custom_class_is_refused(tmp_path):
    marker = tmp_path / "marker"
    instance = CustomClass()
    instance.marker = str(marker)
    path = tmp_path / "custom.pth.tar"
    torch.save({"model": [{}, {}], "opt": instance}, path)
    _refused(path, f"{__name__}.CustomClass")
    assert not marker.exists()


# --- files that are not SCAN checkpoints -----------------------------------------------------------------------


def _py2_file(tmp_path: Path) -> Path:
    opt = of.official_opt()
    path = tmp_path / "model_best.pth.tar"
    of.write_py2_checkpoint(path, opt, *of.random_states(opt))
    return path


def test_not_a_file(tmp_path):
    with pytest.raises(ScanVizError, match="does not exist"):
        load_official_checkpoint(tmp_path / "nope.pth.tar")
    with pytest.raises(ScanVizError, match="is a directory"):
        load_official_checkpoint(tmp_path)


@pytest.mark.parametrize("content", [
    b"",
    b"epoch 7\nthis is a text file\n",
    bytes(range(256)) * 8,
    b"\x80\x02}q\x00.",  # a pickle, but not a torch file
])
def test_foreign_bytes_are_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "file.pth"
    path.write_bytes(content)
    with pytest.raises(ScanVizError, match=r"^cannot load .*not a PyTorch checkpoint or it is damaged"):
        load_official_checkpoint(path)


def test_long_python2_string_gets_a_clear_message(tmp_path):
    # Python 2 wrote str >= 256 bytes as BINSTRING, an opcode torch's weights-only unpickler does not implement
    opt = of.official_opt(logger_name="runs/" + "x" * 300)
    path = tmp_path / "model_best.pth.tar"
    of.write_py2_checkpoint(path, opt, *of.random_states(opt))
    assert ("BINSTRING", "runs/" + "x" * 300) in main_pickle_ops(path)
    with pytest.raises(ScanVizError, match="Python 2 string of 256 bytes or more"):
        load_official_checkpoint(path)


def test_zip_of_something_else(tmp_path):
    path = tmp_path / "model.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ScanVizError, match="not a PyTorch checkpoint"):
        load_official_checkpoint(path)


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_files(tmp_path, keep):
    legacy = _py2_file(tmp_path)
    zipped = tmp_path / "zip.pth"
    write_official_checkpoint(zipped, small_config(), *states_for(small_config()), legacy=False)
    for path in (legacy, zipped):
        data = path.read_bytes()
        path.write_bytes(data[:int(len(data) * keep)])
        with pytest.raises(ScanVizError, match="damaged"):
            load_official_checkpoint(path)


def test_plain_state_dict_without_opt(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"fc.weight": torch.zeros(2, 3)}, path)
    with pytest.raises(ScanVizError, match="no 'model' or 'opt' entry"):
        load_official_checkpoint(path)
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ScanVizError, match="holds a list"):
        load_official_checkpoint(path)


def test_model_not_two_state_dicts(tmp_path):
    config = small_config()
    image, text = states_for(config)
    path = tmp_path / "ckpt.pth"
    for model in ([image], image, [image, text, text], [image, torch.zeros(3)]):
        torch.save({"model": model, "opt": argparse.Namespace(**config.to_dict())}, path)
        with pytest.raises(ScanVizError, match="list of two state dicts"):
            load_official_checkpoint(path)


@pytest.mark.parametrize("opt_change,state_change,match", [
    ({"embed_size": 16}, None, r"fc.weight has shape \(8, 12\) but the config .* needs \(16, 12\)"),
    ({"img_dim": 2048}, None, r"fc.weight has shape"),
    ({"vocab_size": 11}, None, r"embed.weight has shape \(10, 6\)"),
    ({"word_dim": 300}, None, r"embed.weight has shape"),
    ({"num_layers": 2}, None, r"missing rnn.weight_ih_l1"),
    ({"bi_gru": False}, None, r"unexpected rnn.weight_ih_l0_reverse"),
    ({"precomp_enc_type": "weight_norm"}, None, r"missing fc.weight_g, fc.weight_v; unexpected fc.weight"),
    ({"raw_feature_norm": "bogus"}, None, r"unusable training options: config: raw_feature_norm"),
    ({"embed_size": 0}, None, r"unusable training options"),
    (None, ("rnn.bias_hh_l0", torch.zeros(23)), r"rnn.bias_hh_l0 has shape \(23,\)"),
    (None, ("rnn.weight_hh_l0", torch.full((24, 8), float("nan"))), r"NaN"),
    (None, ("rnn.weight_hh_l0", "not a tensor"), r"not a tensor"),
    (None, ("rnn.weight_hh_l0", torch.zeros(24, 8, dtype=torch.int64)), r"floating-point"),
])
def test_wrong_shapes_and_options(tmp_path, opt_change, state_change, match):
    opt = of.official_opt()
    image, text = of.random_states(opt)
    opt.update(opt_change or {})
    if state_change:
        text[state_change[0]] = state_change[1]
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"epoch": 1, "model": [image, text], "opt": opt}, path)
    with pytest.raises(ScanVizError, match=match):
        load_official_checkpoint(path)


# --- writing official checkpoints --------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("precomp_enc_type", ["basic", "weight_norm"])
def test_write_then_load_official(tmp_path, legacy, precomp_enc_type):
    config = small_config(num_layers=2, precomp_enc_type=precomp_enc_type, extra={"data_path": "/data/café"})
    image, text = states_for(config)
    path = tmp_path / "runs" / "model_best.pth.tar"
    write_official_checkpoint(path, config, image, text, epoch=3, best_rsum=401.25, eiters=999, legacy=legacy)
    assert zipfile.is_zipfile(path) is not legacy
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]

    ckpt = load_official_checkpoint(path)
    # the head's settings are written the official way (flat, every one) and filed under head_params on reading
    assert ckpt.config == config.replace(head_params=head_settings(config.head, config))
    assert (ckpt.epoch, ckpt.best_rsum, ckpt.eiters) == (3, 401.25, 999)
    assert_states_equal(ckpt.image_state, image)
    assert_states_equal(ckpt.text_state, text)

    # what the official code gets: a dict with a list of two OrderedDicts and a Namespace with every option
    with torch.serialization.safe_globals([argparse.Namespace]):
        raw = torch.load(path, weights_only=True)
    assert set(raw) == {"epoch", "model", "best_rsum", "opt", "Eiters"}
    assert isinstance(raw["model"], list) and all(type(s) is OrderedDict for s in raw["model"])
    assert vars(raw["opt"])["data_path"] == "/data/café" and raw["opt"].lambda_lse == 6.0
    assert set(ScanConfig.field_names()) <= set(vars(raw["opt"]))


def test_write_official_rejects_mismatched_weights(tmp_path):
    config = small_config()
    image, text = states_for(config.replace(embed_size=4))
    with pytest.raises(ScanVizError, match="fc.weight has shape"):
        write_official_checkpoint(tmp_path / "x.pth", config, image, text)
    assert not list(tmp_path.iterdir())


# --- the project's model directory -------------------------------------------------------------------------------


def test_save_then_load_model_dir(tmp_path):
    config = small_config(precomp_enc_type="weight_norm", num_layers=2)
    image, text = states_for(config)
    out = tmp_path / "model"
    out.mkdir()
    (out / "vocab.json").write_text("{}")  # written by someone else; must survive and be ignored
    assert save_model_dir(out, config, image, text) == out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "vocab.json"]
    loaded_config, loaded_image, loaded_text = load_model_dir(out)
    assert loaded_config == config
    assert_states_equal(loaded_image, image)
    assert_states_equal(loaded_text, text)


def test_model_dir_gets_vocab_size_from_embedding(tmp_path):
    config = small_config()
    image, text = states_for(config)
    save_model_dir(tmp_path, config.replace(vocab_size=0), image, text)
    assert load_model_dir(tmp_path)[0].vocab_size == 10


def test_load_model_dir_errors(tmp_path):
    config = small_config()
    image, text = states_for(config)
    with pytest.raises(ScanVizError, match="does not exist"):
        load_model_dir(tmp_path / "missing")
    with pytest.raises(ScanVizError, match="has no config.json"):
        load_model_dir(tmp_path)
    save_model_dir(tmp_path, config, image, text)

    weights = tmp_path / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(ScanVizError, match="not a valid safetensors file"):
        load_model_dir(tmp_path)
    torch.save({"img_enc.fc.weight": image["fc.weight"]}, weights)  # a pickle, not safetensors
    with pytest.raises(ScanVizError, match="not a valid safetensors file"):
        load_model_dir(tmp_path)
    save_file({"img_enc.fc.weight": torch.zeros(8, 13), "img_enc.fc.bias": torch.zeros(8),
               **{f"txt_enc.{k}": v for k, v in text.items()}}, str(weights))
    with pytest.raises(ScanVizError, match=r"fc.weight has shape \(8, 13\)"):
        load_model_dir(tmp_path)
    save_file({"other.x": torch.zeros(1)}, str(weights))
    with pytest.raises(ScanVizError, match="belongs to neither encoder"):
        load_model_dir(tmp_path)

    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ScanVizError, match="model config config.json is not valid JSON"):
        load_model_dir(tmp_path)
    weights.unlink()
    with pytest.raises(ScanVizError, match="has no model.safetensors"):
        load_model_dir(tmp_path)


# --- converting --------------------------------------------------------------------------------------------------


def test_convert_official(tmp_path):
    checkpoint = _py2_file(tmp_path)
    vocab = write_vocab(tmp_path / "f30k_precomp_vocab.json", 10)
    out = tmp_path / "converted"
    ckpt = convert_official(checkpoint, vocab, out)
    assert (out / "vocab.json").read_bytes() == vocab.read_bytes()
    config, image, text = load_model_dir(out)
    assert config == ckpt.config and config.vocab_size == 10
    assert_states_equal(image, ckpt.image_state)
    assert_states_equal(text, ckpt.text_state)
    # converting again into the same place, with the copied vocab as input, is fine
    convert_official(checkpoint, out / "vocab.json", out)
    assert (out / "vocab.json").read_bytes() == vocab.read_bytes()


def test_convert_official_with_wrong_vocab(tmp_path):
    checkpoint = _py2_file(tmp_path)
    out = tmp_path / "converted"
    with pytest.raises(ScanVizError, match="vocab has 12 words but the checkpoint's embedding has 10 rows"):
        convert_official(checkpoint, write_vocab(tmp_path / "vocab.json", 12), out)
    assert not out.exists()
    (tmp_path / "idx_only.json").write_text(json.dumps({"idx": 9}))
    with pytest.raises(ScanVizError, match="vocab has 9 words"):
        convert_official(checkpoint, tmp_path / "idx_only.json", out)
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ScanVizError, match="no 'word2idx' or 'idx'"):
        convert_official(checkpoint, tmp_path / "bad.json", out)
    with pytest.raises(ScanVizError, match="cannot read vocabulary"):
        convert_official(checkpoint, tmp_path / "missing.json", out)


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")
def test_expected_shapes_follow_the_official_gru():
    config = small_config(num_layers=2)
    text = text_state_shapes(config)
    assert text["rnn.weight_ih_l0"] == (24, 6) and text["rnn.weight_ih_l1_reverse"] == (24, 16)
    assert len(text) == 1 + 2 * 2 * 4
    assert image_state_shapes(config.replace(precomp_enc_type="weight_norm"))["fc.weight_g"] == ()
    # the same shapes as torch's own modules
    gru = torch.nn.GRU(6, 8, 2, batch_first=True, bidirectional=True)
    assert {f"rnn.{k}": tuple(v.shape) for k, v in gru.state_dict().items()} == {
        k: v for k, v in text.items() if k.startswith("rnn.")}
    fc = torch.nn.utils.weight_norm(torch.nn.Linear(12, 8), dim=None)
    assert {f"fc.{k}": tuple(v.shape) for k, v in fc.state_dict().items()} == image_state_shapes(
        config.replace(precomp_enc_type="weight_norm"))
