"""scan_viz/app/fair.py (the per-session rate on reruns with heavy work, the first-come-first-served cap on heavy
work) and the homes of loaded bundles in scan_viz/app/state.py (no link or upload evicts the operator's model).
The effect on a second visitor under load: benchmarks/bench_fair.py."""
from __future__ import annotations

import threading
import time

import pytest
from streamlit.testing.v1 import AppTest

from scan_viz.app import fair, state
from scan_viz.app.bundle import Sources, bundled_models
from scan_viz.app.fair import Abandoned, FairGate, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_gives_a_burst_then_one_token_per_refill():
    clock = Clock()
    bucket = TokenBucket(3, refill_s=2.0, clock=clock)
    for _ in range(3):
        assert bucket.wait_s() == 0
        bucket.take()
    assert bucket.wait_s() == pytest.approx(2.0)
    clock.now += 1.0
    assert bucket.wait_s() == pytest.approx(1.0)
    clock.now += 100
    assert bucket.wait_s() == 0 and bucket.tokens == 3  # never more than the burst
    bucket.take(4)  # a load costs more than the burst: the next start waits for the debt too
    assert bucket.wait_s() == pytest.approx(4.0)


def test_the_gate_serves_first_come_first_and_a_leaver_gives_its_place_up():
    gate, order = FairGate(1), []
    leave = threading.Event()
    started = []

    def worker(name: str, abandoned=lambda: False) -> None:
        try:
            with gate.slot(abandoned):
                order.append(name)
                time.sleep(0.05)
        except Abandoned:
            order.append(f"{name} left")

    with gate.slot():  # hold the only slot while three sessions queue up
        for name, abandoned in (("a", lambda: False), ("b", leave.is_set), ("c", lambda: False)):
            thread = threading.Thread(target=worker, args=(name, abandoned))
            thread.start()
            started.append(thread)
            deadline = time.monotonic() + 5
            while gate.waiting < len(started) and time.monotonic() < deadline:
                time.sleep(0.01)
        leave.set()  # b's rerun was superseded while it waited
        deadline = time.monotonic() + 5
        while gate.waiting > 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    for thread in started:
        thread.join(5)
    assert order == ["b left", "a", "c"]


def test_a_free_slot_goes_to_the_session_that_used_the_least_lately():
    gate, order, threads = FairGate(1), [], []

    def worker(name: str, used: float) -> None:
        with gate.slot(used=used):
            order.append(name)

    with gate.slot():
        for name, used in (("busy", 5.0), ("fresh", 0.0), ("busier", 9.0)):  # asked in this order
            threads.append(threading.Thread(target=worker, args=(name, used)))
            threads[-1].start()
            deadline = time.monotonic() + 5
            while gate.waiting < len(threads) and time.monotonic() < deadline:
                time.sleep(0.01)
    for thread in threads:
        thread.join(5)
    assert order == ["fresh", "busy", "busier"]


def test_reruns_with_heavy_work_wait_for_the_sessions_rate(monkeypatch):
    """The first heavy computation of each rerun takes a token; the rest of that rerun's are free; another session
    has its own bucket."""
    monkeypatch.setattr(fair, "BURST", 2)
    monkeypatch.setattr(fair, "REFILL_S", 0.6)
    monkeypatch.setattr(fair, "_sessions", {})
    monkeypatch.setattr(fair, "_visitors", {})
    monkeypatch.setenv(fair.ENV_FAIR, "1")

    def page():
        import time

        import streamlit as st

        from scan_viz.app import fair

        fair.start_run()
        start = time.monotonic()
        for _ in range(3):
            with fair.turn():
                pass
        st.session_state.setdefault("waits", []).append(time.monotonic() - start)

    at = AppTest.from_function(page)
    for _ in range(4):
        at.run()
    assert not at.exception
    waits = at.session_state["waits"]
    assert max(waits[:2]) < 0.3  # the burst
    assert all(0.3 < w < 1.5 for w in waits[2:]), waits  # then one rerun per refill
    # AppTest's sessions share one id: another session's bucket, directly
    assert fair._session("another session").visitor.bucket.wait_s() == 0


def test_with_fair_sharing_off_nothing_waits(monkeypatch):
    monkeypatch.setattr(fair, "BURST", 1)
    monkeypatch.setattr(fair, "REFILL_S", 60)
    monkeypatch.setattr(fair, "_sessions", {})
    monkeypatch.setattr(fair, "_visitors", {})
    monkeypatch.setenv(fair.ENV_FAIR, "0")

    def page():
        import time

        import streamlit as st

        from scan_viz.app import fair

        fair.start_run()
        start = time.monotonic()
        with fair.turn():
            pass
        st.session_state.setdefault("waits", []).append(time.monotonic() - start)

    at = AppTest.from_function(page)
    for _ in range(3):
        at.run()
    assert max(at.session_state["waits"]) < 0.3


# ----------------------------------------------------------------------------- where bundles live


@pytest.fixture()
def counted_loads(monkeypatch):
    """state.load_bundle replaced by a counter (a stand-in bundle per call); the bundle caches cleared around."""
    loads: list[tuple] = []

    def fake_load(sources):
        loads.append(sources.key())
        return object()

    monkeypatch.setattr(state, "load_bundle", fake_load)
    state._operator_bundle.clear()
    state._shared_bundle.clear()
    yield loads
    state._operator_bundle.clear()
    state._shared_bundle.clear()


def test_links_cycling_bundled_models_never_evict_the_operators_model(counted_loads, monkeypatch):
    monkeypatch.delenv("SCAN_VIZ_MODEL", raising=False)
    operator = Sources.from_env()
    names = [name for name in bundled_models() if name != operator.model]
    assert names
    served = state.bundle_by_key(operator.key())
    for _ in range(3):
        for name in names:
            assert state.bundle_home(Sources(model=name, gallery=operator.gallery)) == "shared"
            state.bundle_by_key(Sources(model=name, gallery=operator.gallery).key())
            assert state.bundle_by_key(operator.key()) is served
    assert counted_loads.count(operator.key()) == 1
    # every bundled model a link may name fits the shared home: cycling them loads each once
    assert len(counted_loads) == 1 + len(names) and len(names) <= state.SHARED_BUNDLES


def test_a_visitors_own_files_load_into_its_session_only(counted_loads, monkeypatch, tmp_path):
    monkeypatch.delenv(fair.ENV_FAIR, raising=False)  # off by default (and AppTest's sessions share one id)
    operator = Sources.from_env()
    own = Sources(model=str(tmp_path / "model_best.pth.tar"), vocab=str(tmp_path / "vocab.json"), gallery=None,
                  regions=str(tmp_path / "regions"), images=str(tmp_path / "images"), label="model_best.pth.tar")
    assert state.bundle_home(operator) == "operator" and state.bundle_home(own) == "session"
    assert state.bundle_home(Sources(model=operator.model, gallery=str(tmp_path))) == "session"

    def page(key):
        import streamlit as st

        from scan_viz.app import state

        first = state.bundle_by_key(key)
        st.session_state["same"] = state.bundle_by_key(key) is first
        st.session_state["held"] = state.OWN_BUNDLE_KEY in st.session_state

    for _ in range(2):  # two sessions: each loads its own, once
        at = AppTest.from_function(page, args=(own.key(),)).run()
        assert not at.exception and at.session_state["same"] and at.session_state["held"]
    assert counted_loads == [own.key(), own.key()]
