"""Links as plain data (scan_viz/app/params.py): every key read and written, bad values dropped with a note."""
from __future__ import annotations

import math

import pytest

from scan_viz.app.params import (QUERY_KEYS, ExploreParams, HeadSettings, explore_query, parse_explore_query,
                                 settings_fields)
from scan_viz.errors import ScanVizError
from scan_viz.limits import MAX_WORDS

FULL = {"image": "test_000042", "q": "a red car", "word": "car", "k": "7", "model": "scan-emoji-i2t",
        "head": "scan", "dir": "i2t", "agg": "Mean", "lsm": "4.5", "lse": "20", "norm": "l2norm"}


def test_every_key_round_trips_in_order():
    params, notes = parse_explore_query(FULL)
    assert notes == []
    assert params == ExploreParams(image="test_000042", q="a red car", word="car", k=7, model="scan-emoji-i2t",
                                   head="scan", dir="i2t", agg="Mean", lsm=4.5, lse=20.0, norm="l2norm")
    query = explore_query(params)
    assert query == FULL and list(query) == list(QUERY_KEYS)


def test_link_settings_override_the_models_own():
    defaults = HeadSettings(direction="t2i", agg_func="LogSumExp", lambda_softmax=9.0, lambda_lse=6.0,
                            raw_feature_norm="clipped_l2norm")
    params, _ = parse_explore_query({"agg": "max", "lsm": "4"})  # aggregation read in any case
    assert params.settings(defaults) == HeadSettings(agg_func="Max", lambda_softmax=4.0)
    assert parse_explore_query({})[0].settings(defaults) == defaults
    changed = HeadSettings(direction="i2t", agg_func="Max", lambda_softmax=2.3000000000000003)
    fields = settings_fields(changed, defaults)
    assert fields == {"dir": "i2t", "agg": "Max", "lsm": 2.3000000000000003}
    assert explore_query(ExploreParams(**fields)) == {"dir": "i2t", "agg": "Max", "lsm": "2.3"}
    assert settings_fields(defaults, defaults) == {}


@pytest.mark.parametrize("key,value,why", [
    ("lsm", "nan", "lambda_softmax must be a number from 0.5 to 50"),
    ("lsm", "inf", "lambda_softmax must be a number from 0.5 to 50"),
    ("lse", "-3", "lambda_lse must be a number from 0.5 to 50"),
    ("lse", "1e9", "lambda_lse must be a number from 0.5 to 50"),
    ("lsm", "nine", "lambda_softmax must be a number"),
    ("agg", "Median", "agg_func must be one of LogSumExp, Mean, Max, Sum"),
    ("norm", "bogus", "raw_feature_norm must be one of"),
    ("dir", "sideways", "cross_attn must be one of t2i, i2t"),
])
def test_unusable_head_values_are_dropped_with_the_shared_message(key, value, why):
    params, notes = parse_explore_query({"image": "x", key: value})
    assert getattr(params, key) is None and params.image == "x"
    assert len(notes) == 1 and why in notes[0] and repr(value) in notes[0] and "\n" not in notes[0]


@pytest.mark.parametrize("model", ["/etc/passwd", "../pretrained/x", "a/b", ".hidden", "C:\\models\\x", "x" * 300])
def test_a_link_never_names_a_path_as_model(model):
    params, notes = parse_explore_query({"model": model})
    assert params.model is None
    assert len(notes) == 1 and "not a bundled model's name" in notes[0]


def test_long_sentences_are_refused_whole_with_the_limit():
    words = " ".join(["car"] * (MAX_WORDS + 1))
    params, notes = parse_explore_query({"q": words})
    assert params.q is None and f"the sentence has {MAX_WORDS + 1} words; the limit is {MAX_WORDS}" in notes[0]
    exact = " ".join(["car"] * MAX_WORDS)
    assert parse_explore_query({"q": exact}) == (ExploreParams(q=exact), [])
    params, notes = parse_explore_query({"q": "a red car " * 2000})
    assert params.q is None and "characters long; the limit is 1,000 characters" in notes[0]


def test_head_settings_refuse_what_the_cli_refuses():
    for bad in ({"lambda_softmax": math.nan}, {"lambda_lse": -1.0}, {"lambda_softmax": 1e6}, {"agg_func": "Median"}):
        with pytest.raises(ScanVizError, match="must be"):
            HeadSettings(**bad)
