"""Links as plain data (scan_viz/app/params.py): every key read and written, bad values dropped with a note."""
from __future__ import annotations

import math

import pytest

from scan_viz.app.params import (PAIR_KEYS, ExploreParams, HeadSettings, explore_query, parse_explore_query,
                                 query_keys, settings_fields)
from scan_viz.config import ScanConfig
from scan_viz.errors import ScanVizError
from scan_viz.heads import all_head_params
from scan_viz.limits import MAX_WORDS

FULL = {"image": "test_000042", "q": "a red car", "word": "car", "k": "7", "search": "image", "step": "4",
        "view": "present", "model": "scan-emoji-i2t", "gallery": "photos",
        "head": "scan_i2t", "compare": "scan_t2i,chan", "norm": "l2norm", "lsm": "4.5", "agg": "Mean", "lse": "20",
        "beta": "0.05", "chan_agg": "Mean", "lambda_inter": "5", "lambda_intra": "6", "lambda_pool": "7"}
CONFIG = ScanConfig(cross_attn="t2i", lambda_softmax=9.0, lambda_lse=6.0)


def test_every_key_round_trips_in_order():
    params, notes = parse_explore_query(FULL)
    assert notes == []
    assert params == ExploreParams(
        image="test_000042", q="a red car", word="car", k=7, search="image", step=4, view="present",
        model="scan-emoji-i2t", gallery="photos", head="scan_i2t",
        compare="scan_t2i,chan", settings=(("raw_feature_norm", "l2norm"), ("lambda_softmax", 4.5),
                                           ("agg_func", "Mean"), ("lambda_lse", 20.0), ("beta", 0.05),
                                           ("chan_agg", "Mean"), ("lambda_inter", 5.0), ("lambda_intra", 6.0),
                                           ("lambda_pool", 7.0)))
    query = explore_query(params)
    assert query == FULL and list(query) == list(query_keys())


def test_link_keys_are_generated_from_the_head_declarations():
    assert query_keys()[len(PAIR_KEYS):] == tuple(p.url_key for p in all_head_params())
    assert {"lsm", "lse", "agg", "norm", "beta", "lambda_pool"} <= set(query_keys())


def test_link_settings_override_the_models_own():
    own = HeadSettings.from_config(CONFIG)
    assert own == HeadSettings("scan_t2i", (("raw_feature_norm", "clipped_l2norm"), ("lambda_softmax", 9.0),
                                            ("agg_func", "LogSumExp"), ("lambda_lse", 6.0)))
    params, _ = parse_explore_query({"agg": "max", "lsm": "4"})  # aggregation read in any case
    assert params.head_settings(own, CONFIG).overrides() == {"raw_feature_norm": "clipped_l2norm",
                                                             "lambda_softmax": 4.0, "agg_func": "Max",
                                                             "lambda_lse": 6.0}
    assert parse_explore_query({})[0].head_settings(own, CONFIG) == own
    changed = HeadSettings.for_head("scan_i2t", CONFIG, {"agg_func": "Max", "lambda_softmax": 2.3000000000000003})
    fields = settings_fields(changed, own, CONFIG)
    assert fields == {"head": "scan_i2t", "settings": (("lambda_softmax", 2.3000000000000003), ("agg_func", "Max"))}
    assert explore_query(ExploreParams(**fields)) == {"head": "scan_i2t", "lsm": "2.3", "agg": "Max"}
    assert settings_fields(own, own, CONFIG) == {"head": None, "settings": ()}
    # a link's beta is CHAN's: it does not leak into SCAN's settings
    params, _ = parse_explore_query({"head": "chan", "beta": "0.3"})
    assert params.head_settings(own, CONFIG) == HeadSettings("chan", (("beta", 0.3), ("chan_agg", "LogSumExp")))
    assert parse_explore_query({"dir": "i2t"})[0].head == "scan_i2t"  # links from before heads were named


def test_compare_keeps_known_heads_and_notes_the_rest():
    params, notes = parse_explore_query({"compare": "scan_t2i, chan,nope,chan"})
    assert params.compared() == ["scan_t2i", "chan"]
    assert len(notes) == 1 and "'nope'" in notes[0] and "left out" in notes[0]


@pytest.mark.parametrize("key,value,why", [
    ("lsm", "nan", "lambda_softmax must be a number from 0.5 to 50"),
    ("lsm", "inf", "lambda_softmax must be a number from 0.5 to 50"),
    ("lse", "-3", "lambda_lse must be a number from 0.5 to 50"),
    ("lse", "1e9", "lambda_lse must be a number from 0.5 to 50"),
    ("lsm", "nine", "lambda_softmax must be a number"),
    ("agg", "Median", "agg_func must be one of LogSumExp, Mean, Max, Sum"),
    ("norm", "bogus", "raw_feature_norm must be one of"),
    ("beta", "5", "beta must be a number from 0.01 to 1"),
    ("chan_agg", "Max", "chan_agg must be one of LogSumExp, Mean"),
])
def test_unusable_head_values_are_dropped_with_the_shared_message(key, value, why):
    params, notes = parse_explore_query({"image": "x", key: value})
    assert params.settings == () and params.image == "x"
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
            HeadSettings.for_head("scan_t2i", CONFIG, bad)


def test_search_names_retrieves_direction_and_a_bad_one_is_a_note():
    assert parse_explore_query({"search": "Image"})[0].search == "image"
    params, notes = parse_explore_query({"search": "sideways"})
    assert params.search is None and notes == ["the link's search='sideways' is not one of text, image: ignored"]
