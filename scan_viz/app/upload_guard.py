"""Each uploader's cap enforced by the server, and upload bytes no rerun claims freed.

Streamlit checks only ``server.maxUploadSize`` (the largest cap of any uploader) when a file is posted; an
uploader's own ``max_upload_size`` is the browser's check. A caller that bypasses the browser could post 256 MB to
a 20 MB uploader, and files posted but never claimed by a rerun (four 200 MB posts to the Model form without
pressing Load) stayed in memory, also after the tab closed: Streamlit frees a session's uploads when it shuts
the session down, and a session that expires after a disconnect is never shut down. So:

- The pages draw uploaders with :func:`file_uploader`, which records each session's caps: a post to the session
  may be no larger than the largest cap of the uploaders its current page shows (none: nothing may be posted).
- A session holds at most :data:`MAX_SESSION_MB` of uploaded bytes (what the Model form's caps add up to), and
  the process :data:`MAX_TOTAL_MB`.
- Both are checked on the bytes as they arrive, before Streamlit parses the body: a request over the limit gets
  HTTP 413 as soon as its ``Content-Length`` says so, or as soon as the streamed bytes pass it; nothing is stored.
  The hook sits in front of Streamlit's upload route (its first middleware's ``__call__``, wrapped once per
  process), and the exact file size is checked again when Streamlit stores the file.
- A sweep every :data:`SWEEP_S` seconds frees the files of sessions that have been gone for longer than
  Streamlit keeps a disconnected session, and files no rerun has claimed for :data:`UNCLAIMED_S` seconds.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections import defaultdict
from typing import Any

import streamlit as st

from scan_viz.app.user_files import MAX_CHECKPOINT_MB, MAX_IMAGES_MB, MAX_REGIONS_MB, MAX_VOCAB_MB
from scan_viz.safe_paths import MB

log = logging.getLogger(__name__)

#: Uploaded bytes one session may hold: the Model form filled to every cap.
MAX_SESSION_MB = MAX_CHECKPOINT_MB + MAX_VOCAB_MB + MAX_REGIONS_MB + MAX_IMAGES_MB
#: Uploaded bytes the process may hold, all sessions together.
MAX_TOTAL_MB = 2048
#: A file posted but claimed by no rerun (a form never submitted, a post from outside the browser) is freed
#: after this long.
UNCLAIMED_S = 15 * 60
SWEEP_S = 30.0
#: What a multipart body adds to the file it carries (boundary, part headers, file name); Streamlit's margin.
FRAMING_BYTES = 1 * MB
UPLOAD_PATH = re.compile(r"/_stcore/upload_file/([^/]+)/([^/]+)$")


class UploadGuard:
    """The caps of every session, the bytes each holds, and the checks on a post; one per process."""

    def __init__(self, manager: Any, session_alive=lambda session_id: True, ttl_s: float = 120.0,
                 clock=time.monotonic) -> None:
        self.manager = manager  # Streamlit's MemoryUploadedFileManager
        self._alive = session_alive
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._caps: dict[str, int] = {}  # session -> largest cap (bytes) of the uploaders its page shows
        self._run_caps: dict[str, int] = {}  # the same, for the run in progress
        self._claimed: dict[str, set[str]] = defaultdict(set)  # file ids the session's last run saw
        self._run_claimed: dict[str, set[str]] = defaultdict(set)
        self._posted: dict[tuple[str, str], float] = {}  # (session, file id) -> when it was stored
        self._arriving: dict[str, int] = defaultdict(int)  # bytes of posts still streaming in, per session
        self._gone_since: dict[str, float] = {}
        add_file = manager.add_file

        def checked_add_file(session_id: str, file) -> None:
            self.check_stored(session_id, file.file_id, len(file.data))
            add_file(session_id=session_id, file=file)
            with self._lock:
                self._posted[(session_id, file.file_id)] = self._clock()

        manager.add_file = checked_add_file

    # -- what the pages show

    def start_run(self, session_id: str) -> None:
        with self._lock:
            self._run_caps[session_id] = 0
            self._run_claimed[session_id] = set()

    def shown(self, session_id: str, cap_bytes: int, file_ids: list[str]) -> None:
        """An uploader of ``cap_bytes`` is on the page, holding ``file_ids``. The cap counts at once (a visitor may
        upload before the run ends), on top of the previous page's until the run ends."""
        with self._lock:
            self._run_caps[session_id] = max(self._run_caps.get(session_id, 0), cap_bytes)
            self._caps[session_id] = max(self._caps.get(session_id, 0), cap_bytes)
            self._run_claimed[session_id].update(file_ids)
            self._claimed[session_id].update(file_ids)

    def end_run(self, session_id: str) -> None:
        """The run finished: its uploaders' caps and files are the session's."""
        with self._lock:
            self._caps[session_id] = self._run_caps.pop(session_id, 0)
            self._claimed[session_id] = self._run_claimed.pop(session_id, set())

    # -- what a post may carry

    def _storage(self) -> dict[str, dict[str, Any]]:
        """A snapshot of what the manager holds: session -> file id -> record."""
        with getattr(self.manager, "_lock", threading.Lock()):  # the manager's own lock, where it has one
            return {sid: dict(files) for sid, files in self.manager.file_storage.items()}

    def _held(self, session_id: str, but: str | None = None) -> tuple[int, int]:
        """(bytes this session holds, bytes all sessions hold), ``but`` one file id of this session."""
        storage = self._storage()
        own = sum(len(rec.data) for fid, rec in storage.get(session_id, {}).items() if fid != but)
        total = sum(len(rec.data) for sid, files in storage.items() for fid, rec in files.items()
                    if not (sid == session_id and fid == but))
        return own, total

    def room(self, session_id: str, file_id: str) -> int:
        """The most bytes a file posted now to ``session_id`` may have (0: none may be posted)."""
        own, total = self._held(session_id, but=file_id)
        with self._lock:
            cap = self._caps.get(session_id, 0)
            arriving = sum(self._arriving.values())
            own += self._arriving.get(session_id, 0)
        return max(0, min(cap, MAX_SESSION_MB * MB - own, MAX_TOTAL_MB * MB - total - arriving))

    def check_stored(self, session_id: str, file_id: str, size: int) -> None:
        """Raise HTTP 413 when a parsed file of ``size`` bytes does not fit (Streamlit answers with it)."""
        if size > self.room(session_id, file_id):
            from starlette.exceptions import HTTPException

            raise HTTPException(status_code=413, detail="File too large for this uploader")

    def arriving(self, session_id: str, n_bytes: int) -> None:
        with self._lock:
            self._arriving[session_id] += n_bytes
            if self._arriving[session_id] <= 0:
                del self._arriving[session_id]

    # -- freeing

    def sweep(self) -> int:
        """Free the files of sessions gone for longer than Streamlit keeps them, and files no run claimed for
        :data:`UNCLAIMED_S`; returns the bytes freed."""
        now, freed = self._clock(), 0
        for session_id, files in self._storage().items():
            if not self._alive(session_id):
                since = self._gone_since.setdefault(session_id, now)
                if now - since >= self._ttl_s:
                    freed += sum(len(rec.data) for rec in list(files.values()))
                    self.manager.remove_session_files(session_id)
                    self._forget(session_id)
                continue
            self._gone_since.pop(session_id, None)
            with self._lock:
                claimed = set(self._claimed.get(session_id, ())) | set(self._run_claimed.get(session_id, ()))
                stale = [fid for fid in list(files) if fid not in claimed
                         and now - self._posted.get((session_id, fid), now) >= UNCLAIMED_S]
            for fid in stale:
                rec = files.get(fid)
                freed += len(rec.data) if rec is not None else 0
                self.manager.remove_file(session_id, fid)
                with self._lock:
                    self._posted.pop((session_id, fid), None)
        with self._lock:
            for session_id in [sid for sid in self._caps if sid not in self.manager.file_storage
                               and not self._alive(sid)]:
                self._forget_locked(session_id)
        return freed

    def _forget(self, session_id: str) -> None:
        with self._lock:
            self._forget_locked(session_id)

    def _forget_locked(self, session_id: str) -> None:
        for table in (self._caps, self._run_caps, self._claimed, self._run_claimed, self._gone_since):
            table.pop(session_id, None)
        for key in [key for key in self._posted if key[0] == session_id]:
            del self._posted[key]


# ----------------------------------------------------------------------------- the hook in front of the route

_guard: UploadGuard | None = None
_install_lock = threading.Lock()


def _refuse(send) -> Any:
    async def respond() -> None:
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": b"File too large for this uploader"})

    return respond()


def _wrap_asgi(guard: UploadGuard) -> bool:
    """Check posts in front of Streamlit's upload route: wraps the ``__call__`` of Streamlit's first middleware
    (every request passes it). False when that class is not there (another Streamlit): the browser's caps and
    ``server.maxUploadSize`` still hold."""
    try:
        from starlette.exceptions import HTTPException
        from streamlit.web.server.starlette.starlette_path_security_middleware import PathSecurityMiddleware
    except ImportError:
        return False
    original = PathSecurityMiddleware.__call__
    if getattr(original, "_scan_viz_upload_guard", False):
        return True

    async def guarded(self, scope, receive, send) -> None:
        match = UPLOAD_PATH.search(scope.get("path", "")) if scope.get("type") == "http" else None
        if match is None or scope.get("method") != "PUT":
            await original(self, scope, receive, send)
            return
        session_id, file_id = match.groups()
        limit = guard.room(session_id, file_id) + FRAMING_BYTES
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(send)
            return
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            body = message.get("body", b"")
            if body:
                received += len(body)
                guard.arriving(session_id, len(body))
                if received > limit:
                    raise HTTPException(status_code=413, detail="File too large for this uploader")
            return message

        try:
            await original(self, scope, counted_receive, send)
        finally:
            guard.arriving(session_id, -received)

    guarded._scan_viz_upload_guard = True  # type: ignore[attr-defined]
    PathSecurityMiddleware.__call__ = guarded
    return True


def _sweeper(guard: UploadGuard) -> None:
    while True:
        time.sleep(SWEEP_S)
        try:
            freed = guard.sweep()
            if freed:
                log.info("freed %.1f MB of unclaimed uploads", freed / MB)
        except Exception:  # the sweep must never stop; the next one tries again
            log.exception("upload sweep failed")


def install() -> UploadGuard | None:
    """The process's guard, installed on first call under ``streamlit run`` (None under AppTest or bare)."""
    global _guard
    if _guard is not None:
        return _guard
    from streamlit import config, runtime
    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager

    # AppTest runs scripts under a mock runtime, with an upload manager of its own: nothing to guard there
    manager = runtime.get_instance().uploaded_file_mgr if runtime.exists() else None
    if not isinstance(manager, MemoryUploadedFileManager):
        return None
    with _install_lock:
        if _guard is None:
            live = runtime.get_instance()
            guard = UploadGuard(manager, live.is_active_session,
                                float(config.get_option("server.disconnectedSessionTTL")))
            if not _wrap_asgi(guard):
                log.warning("this Streamlit has no upload route hook: uploaders' caps are the browser's only")
            threading.Thread(target=_sweeper, args=(guard,), name="scan-viz-upload-sweep", daemon=True).start()
            _guard = guard
    return _guard


def _session_id() -> str | None:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx(suppress_warning=True)
    return None if ctx is None else ctx.session_id


def start_run() -> None:
    """Before the page: install the guard once, and start recording this run's uploaders."""
    guard, session_id = install(), _session_id()
    if guard is not None and session_id is not None:
        guard.start_run(session_id)


def end_run() -> None:
    """After the page: this run's uploaders are the session's caps."""
    session_id = _session_id()
    if _guard is not None and session_id is not None:
        _guard.end_run(session_id)


def file_uploader(label: str, *, max_upload_size: int, **kwargs):
    """``st.file_uploader`` whose ``max_upload_size`` (MB) the server enforces too (see the module's note)."""
    value = st.file_uploader(label, max_upload_size=max_upload_size, **kwargs)
    session_id = _session_id()
    if _guard is not None and session_id is not None:
        files = value if isinstance(value, list) else [value] if value is not None else []
        _guard.shown(session_id, max_upload_size * MB, [f.file_id for f in files])
    return value
