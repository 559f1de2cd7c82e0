"""scan_viz/safe_paths.py's AllowedRoots against second names (hard links, other file systems), and config errors
that must not quote the file they come from."""
from __future__ import annotations

import json
import os

import pytest

from scan_viz.errors import ScanVizError
from scan_viz.model.checkpoint import config_from_values, load_config
from scan_viz.safe_paths import AllowedRoots, _refuse_other_names

SECRET = "SECRET_TOKEN_xyz789"


@pytest.fixture()
def linked(tmp_path):
    """A shared root holding hard links to a secret config outside it: as a file and as a folder's member."""
    root, outside = tmp_path / "shared", tmp_path / "private"
    root.mkdir()
    outside.mkdir()
    secret = outside / "config.json"
    secret.write_text(json.dumps({"embed_size": SECRET}))
    os.link(secret, root / "config.json")
    (root / "model").mkdir()
    os.link(secret, root / "model" / "config.json")
    (root / "own.json").write_text("{}")
    return root, secret


def test_a_hard_link_inside_the_root_is_refused_in_one_line(linked):
    root, _ = linked
    roots = AllowedRoots.of(root)
    with pytest.raises(ScanVizError) as file_refusal:
        roots.check(str(root / "config.json"), "vocab")
    with pytest.raises(ScanVizError) as member_refusal:
        roots.check(str(root / "model"), "checkpoint")
    assert "hard link" in str(file_refusal.value) and "hard link" in str(member_refusal.value)
    assert "model/config.json" not in str(file_refusal.value)
    for message in (str(file_refusal.value), str(member_refusal.value)):
        assert "\n" not in message and SECRET not in message and "private" not in message
    assert roots.check(str(root / "own.json"), "vocab") == root / "own.json"  # one name: read as before


def test_a_file_on_another_file_system_than_its_root_is_refused(tmp_path):
    info = os.stat(tmp_path)
    with pytest.raises(ScanVizError, match="another file system"):
        _refuse_other_names(os.stat_result((info.st_mode, 0, info.st_dev + 1, 1, 0, 0, 10, 0, 0, 0)),
                            info.st_dev, "Vocabulary JSON")
    _refuse_other_names(os.stat_result((info.st_mode, 0, info.st_dev, 1, 0, 0, 10, 0, 0, 0)), info.st_dev, "x")


@pytest.mark.parametrize("values", [
    {"embed_size": SECRET}, {"margin": SECRET}, {"agg_func": SECRET}, {"raw_feature_norm": SECRET}, {"cross_attn": SECRET},
    {"precomp_enc_type": SECRET}, {"lambda_softmax": SECRET}, {"embed_size": "9" * 5000},
])
def test_config_errors_name_the_field_not_its_value(values):
    with pytest.raises(ScanVizError) as refusal:
        config_from_values(values)
    message = str(refusal.value)
    field = next(iter(values))
    assert field in message and " must be " in message
    assert SECRET not in message and "9999" not in message and "\n" not in message


def test_config_read_through_a_hard_link_is_not_quoted(linked, tmp_path):
    _, secret = linked
    with pytest.raises(ScanVizError) as refusal:
        load_config(secret)
    assert str(refusal.value) == "config: field embed_size must be an integer"
