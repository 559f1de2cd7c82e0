"""scan_viz/app/upload_guard.py: per-session caps from the uploaders a page shows, the session's and the process's
bounds on stored bytes, and the sweep that frees unclaimed uploads and those of expired sessions. (The hook on a
real server: tests/browser/test_browser_upload_caps.py.)"""
from __future__ import annotations

import pytest
from starlette.exceptions import HTTPException
from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
from streamlit.runtime.uploaded_file_manager import UploadedFileRec
from streamlit.testing.v1 import AppTest

from scan_viz.app import upload_guard
from scan_viz.app.upload_guard import MAX_SESSION_MB, UNCLAIMED_S, UploadGuard

MB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def guarded():
    manager, clock, alive = MemoryUploadedFileManager("/upload"), Clock(), {"s1", "s2"}
    guard = UploadGuard(manager, lambda sid: sid in alive, ttl_s=120, clock=clock)
    return guard, manager, clock, alive


def post(manager, session_id: str, file_id: str, size: int) -> None:
    manager.add_file(session_id=session_id, file=UploadedFileRec(file_id, "f.bin", "application/octet-stream",
                                                                 bytes(size)))


def test_a_post_may_be_as_large_as_the_largest_uploader_of_the_page(guarded):
    guard, manager, _, _ = guarded
    assert guard.room("s1", "a") == 0  # no uploader shown yet: nothing may be posted
    guard.start_run("s1")
    guard.shown("s1", 20 * MB, [])
    assert guard.room("s1", "a") == 20 * MB  # counts at once, before the run ends
    guard.end_run("s1")
    post(manager, "s1", "a", 20 * MB)
    with pytest.raises(HTTPException) as refused:
        post(manager, "s1", "b", 20 * MB + 1)
    assert refused.value.status_code == 413 and "b" not in manager.file_storage["s1"]
    # a page without uploaders: its run leaves no cap
    guard.start_run("s1")
    guard.end_run("s1")
    assert guard.room("s1", "c") == 0
    assert guard.room("s2", "c") == 0  # another session has its own caps


def test_a_session_holds_at_most_the_model_forms_caps(guarded):
    guard, manager, _, _ = guarded
    guard.start_run("s1")
    for cap in (128, 16, 256, 20):
        guard.shown("s1", cap * MB, [])
    guard.end_run("s1")
    stored = 0
    with pytest.raises(HTTPException):
        for n in range(4):  # four 200 MB posts without pressing Load: the fourth does not fit
            post(manager, "s1", f"f{n}", 200 * MB)
            stored += 200 * MB
    assert stored == 600 * MB and sum(len(r.data) for r in manager.file_storage["s1"].values()) == stored
    assert guard.room("s1", "f4") == MAX_SESSION_MB * MB - stored
    assert guard.room("s1", "f0") == 256 * MB  # replacing a file frees its own bytes
    guard.arriving("s1", 50 * MB)  # bytes still streaming in count too
    assert guard.room("s1", "f4") == MAX_SESSION_MB * MB - stored - 50 * MB
    guard.arriving("s1", -50 * MB)


def test_the_sweep_frees_unclaimed_files_and_those_of_expired_sessions(guarded):
    guard, manager, clock, alive = guarded
    for session_id in ("s1", "s2"):
        guard.start_run(session_id)
        guard.shown(session_id, 20 * MB, [])
        guard.end_run(session_id)
    post(manager, "s1", "claimed", 1 * MB)
    post(manager, "s1", "unclaimed", 1 * MB)
    post(manager, "s2", "gone", 1 * MB)
    guard.start_run("s1")
    guard.shown("s1", 20 * MB, ["claimed"])  # a rerun saw this one in its uploader
    guard.end_run("s1")
    alive.discard("s2")  # s2's tab closed
    clock.now += 60
    assert guard.sweep() == 0  # too early for either: s2 is seen gone from now on
    clock.now += 121
    assert guard.sweep() == 1 * MB and "s2" not in manager.file_storage  # expired after Streamlit's TTL
    clock.now += UNCLAIMED_S
    assert guard.sweep() == 1 * MB
    assert set(manager.file_storage["s1"]) == {"claimed"}


def test_uploaders_keep_their_browser_cap_in_an_app_test():
    def page():
        import streamlit as st

        from scan_viz.app import upload_guard

        upload_guard.start_run()
        st.session_state["value"] = upload_guard.file_uploader("photo", max_upload_size=20, key="up")
        upload_guard.end_run()

    at = AppTest.from_function(page).run()
    assert not at.exception and at.file_uploader[0].proto.max_upload_size_mb == 20
    assert upload_guard.install() is None  # no server: nothing to hook, the uploader works as Streamlit's
