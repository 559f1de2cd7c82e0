"""Fair sharing of one server between its visitors: heavy work (scoring, rendering, loading a model) is rationed.

Every session has one script thread, so a session computes one thing at a time; what starves another visitor is
how often a session starts heavy work (a slider dragged through 100 values: 100 reruns, each a new alignment, its
panels and views) and how many threads compute at once on a few cores. Two limits, both here:

- **A rate per browser.** The first heavy computation of a rerun takes a token from the bucket of the browser
  behind the session (its XSRF cookie, so a reload, which is a new session, does not refill it; a client without
  cookies gets one per session): :data:`BURST` tokens, one back every :data:`REFILL_S` seconds; a model load
  takes :data:`LOAD_COST`. A session without a token waits for one: a short wait, never an error. Streamlit folds
  the reruns that arrive meanwhile into one, so a dragged slider computes its latest value only.
- **A cap on concurrent heavy work.** At most :data:`SLOTS` heavy computations run at once, process-wide. A free
  slot goes to the waiting browser that has used the least heavy time lately (then first come first served), so
  a visitor who just arrived waits for the computations running, not for the queue of one that keeps the server
  busy.

A rerun or a closed tab while a session waits gives its place up (the wait ends with Streamlit's own silent stop,
and the newer rerun, if any, starts), so abandoned reruns and reloaded tabs queue nothing. A computation already
running finishes. Both limits are off unless ``SCAN_VIZ_FAIR_SHARING=1``: measured on a 2-core machine shared
with other jobs, they did not help a second visitor (benchmarks/bench_fair.py, docs/serving.md).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

ENV_FAIR = "SCAN_VIZ_FAIR_SHARING"
#: Heavy computations at once, process-wide. One was measured slower for a second visitor than none at all on 2
#: cores (benchmarks/bench_fair.py): it could not compute beside the hammering session. Two let a visitor compute
#: beside one busy session, and still bound a burst (a tab reloaded 50 times leaves runs behind).
SLOTS = int(os.environ.get("SCAN_VIZ_HEAVY_SLOTS", "2") or 2)  # 0: no cap (the rate alone)
#: Reruns with heavy work a browser may start back to back, then one every REFILL_S seconds.
BURST = 4
REFILL_S = 3.0
#: Tokens a model load takes (4-5 s of CPU for a bundled model and its gallery).
LOAD_COST = 4
#: How often a waiting session looks at whether it is still wanted.
POLL_S = 0.05
#: A session's heavy time counts for its place in the queue with this time constant (seconds).
USAGE_DECAY_S = 10.0

F = TypeVar("F", bound=Callable)


def enabled() -> bool:
    """Whether ``SCAN_VIZ_FAIR_SHARING`` is 1. Off by default: in four runs of benchmarks/bench_fair.py (docs/serving.md,
    "Fair sharing") a second visitor was 1.2-1.4x slower under hammering with it on than off."""
    return os.environ.get(ENV_FAIR, "").strip().lower() in ("1", "true", "on", "yes")


@dataclasses.dataclass
class TokenBucket:
    """``capacity`` tokens, one added every ``refill_s`` seconds (``clock`` is injectable for tests)."""

    capacity: float
    refill_s: float
    clock: Callable[[], float] = time.monotonic
    tokens: float = dataclasses.field(init=False)
    _at: float = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.tokens, self._at = float(self.capacity), self.clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(float(self.capacity), self.tokens + (now - self._at) / self.refill_s)
        self._at = now

    def wait_s(self, cost: float = 1) -> float:
        """Seconds until ``cost`` tokens are there (0: now). A cost over the capacity waits for a full bucket."""
        self._refill()
        return max(0.0, (min(cost, self.capacity) - self.tokens) * self.refill_s)

    def take(self, cost: float = 1) -> None:
        self._refill()
        self.tokens -= cost  # may go below 0: a load's cost over the capacity delays the next start


class Abandoned(Exception):
    """The waiting rerun is no longer wanted (a newer rerun or a closed session)."""


class FairGate:
    """At most ``slots`` holders at once. A free slot goes to the waiter whose session has used the least heavy
    time lately (its ``used`` when it asked), ties in the order they asked: a visitor who has computed nothing
    for a while goes ahead of one who keeps the server busy."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._cond = threading.Condition()
        self._busy = 0
        self._queue: list[tuple[float, int]] = []  # (used, ticket) of each waiter
        self._tickets = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @contextlib.contextmanager
    def slot(self, abandoned: Callable[[], bool] = lambda: False, used: float = 0.0) -> Iterator[None]:
        """Hold a slot for the ``with`` block; raises :class:`Abandoned` (and gives the place up) when
        ``abandoned()`` turns true while waiting."""
        with self._cond:
            place = (used, next(self._tickets))
            self._queue.append(place)
            try:
                while not (self._busy < self.slots and min(self._queue) == place):
                    if abandoned():
                        raise Abandoned
                    self._cond.wait(POLL_S)
            finally:
                self._queue.remove(place)
                self._cond.notify_all()
            self._busy += 1
        try:
            yield
        finally:
            with self._cond:
                self._busy -= 1
                self._cond.notify_all()


@dataclasses.dataclass
class _Visitor:
    """What one browser has used: its rate, and its heavy seconds lately (decaying with USAGE_DECAY_S)."""

    bucket: TokenBucket
    used_s: float = 0.0
    used_at: float = 0.0

    def used(self, now: float) -> float:
        return self.used_s * math.exp(-(now - self.used_at) / USAGE_DECAY_S)

    def add_use(self, seconds: float, now: float) -> None:
        self.used_s, self.used_at = self.used(now) + seconds, now


@dataclasses.dataclass
class _Session:
    visitor: _Visitor
    run: int = 0
    charged_run: int = -1


_GATE = FairGate(SLOTS)
_sessions: dict[str, _Session] = {}
_sessions_lock = threading.Lock()
_depth = threading.local()


_visitors: dict[str, _Visitor] = {}


def _visitor_key(session_id: str) -> str:
    """The browser behind a session: the token of Streamlit's XSRF cookie, the same in every tab and across
    reloads of one browser (a reload is a new session), else the session itself (a client that drops cookies
    is limited per session only)."""
    try:
        from streamlit.web.server.starlette.starlette_app_utils import decode_xsrf_token_string

        token, _ = decode_xsrf_token_string(st_context_cookie("_streamlit_xsrf"))
        if token:
            return "browser:" + hashlib.sha256(token).hexdigest()[:16]
    except Exception:  # another Streamlit, no cookie, a malformed one: per session
        pass
    return "session:" + session_id


def st_context_cookie(name: str) -> str | None:
    import streamlit as st

    return st.context.cookies.get(name)


def _session(session_id: str) -> _Session:
    with _sessions_lock:
        record = _sessions.get(session_id)
    if record is not None:
        return record
    key = _visitor_key(session_id)
    with _sessions_lock:
        visitor = _visitors.get(key)
        if visitor is None:
            visitor = _visitors[key] = _Visitor(TokenBucket(BURST, REFILL_S))
        return _sessions.setdefault(session_id, _Session(visitor))


def start_run(session_id: str | None = None) -> None:
    """A new rerun of this session (called once per run, before the page): its first heavy computation will be
    charged. Also forgets sessions that have ended."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    if session_id is None:
        ctx = get_script_run_ctx()
        if ctx is None:
            return
        session_id = ctx.session_id
    _session(session_id).run += 1
    with _sessions_lock:
        if len(_sessions) > 64:
            from streamlit import runtime

            if runtime.exists():
                live = runtime.get_instance()
                for gone in [sid for sid in _sessions if sid != session_id and not live.is_active_session(sid)]:
                    del _sessions[gone]
                kept = {id(record.visitor) for record in _sessions.values()}
                now = time.monotonic()
                for key in [key for key, v in _visitors.items() if id(v) not in kept and v.used(now) < 0.01
                            and v.bucket.wait_s(BURST) == 0]:
                    del _visitors[key]  # back to a full bucket and no recent use: nothing to remember


def _superseded(ctx) -> bool:
    """Whether Streamlit has been asked to rerun or stop this session's script (the request is left for
    Streamlit's own check). Reads a private field: should it go, a waiting rerun is just not cut short."""
    requests = getattr(ctx, "script_requests", None)
    state = getattr(requests, "_state", None)
    return state is not None and getattr(state, "name", "CONTINUE") != "CONTINUE"


def _wait(seconds: float, abandoned: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if abandoned():
            raise Abandoned
        time.sleep(min(POLL_S, left))


@contextlib.contextmanager
def turn(load: bool = False) -> Iterator[None]:
    """Run the ``with`` block as this session's heavy work: charged to its rate (once per rerun; a ``load``
    always, at :data:`LOAD_COST`), then in a slot. Nested turns run in the outer one's slot. Outside a script
    run (the command line, tests) or with fair sharing off, the block just runs."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    ctx = get_script_run_ctx(suppress_warning=True)
    if ctx is None or not enabled() or getattr(_depth, "n", 0) > 0:
        yield
        return
    record = _session(ctx.session_id)

    def abandoned() -> bool:
        return _superseded(ctx)

    visitor = record.visitor
    try:
        if load or record.charged_run != record.run:
            cost = LOAD_COST if load else 1
            _wait(visitor.bucket.wait_s(cost), abandoned)
            visitor.bucket.take(cost)
            record.charged_run = record.run
        held = _GATE.slot(abandoned, used=visitor.used(time.monotonic())) if SLOTS > 0 else contextlib.nullcontext()
        held.__enter__()
    except Abandoned:
        raise StopException from None  # Streamlit's silent stop; a pending rerun starts next
    _depth.n = 1
    start = time.monotonic()
    try:
        yield
    finally:
        _depth.n = 0
        visitor.add_use(time.monotonic() - start, time.monotonic())
        held.__exit__(None, None, None)


def heavy(func: F) -> F:
    """Decorator: ``func`` runs as heavy work (:func:`turn`). Put it under ``st.cache_data``/``cache_resource``,
    so only a cache miss waits."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with turn():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
