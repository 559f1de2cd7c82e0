"""Fair sharing of one server between its visitors: heavy work (scoring, rendering, loading a model) is rationed.

Every session has one script thread, so a session computes one thing at a time; what starves another visitor is
how often a session starts heavy work (a slider dragged through 100 values: 100 reruns, each a new alignment, its
panels and views) and how many threads compute at once on a few cores. Two limits, both here:

- **A rate per session.** The first heavy computation of a rerun takes a token from the session's bucket
  (:data:`BURST` tokens, one back every :data:`REFILL_S` seconds); a model load takes :data:`LOAD_COST`. A session
  without a token waits for one: a short wait, never an error. Streamlit folds the reruns that arrive meanwhile
  into one, so a dragged slider computes its latest value only.
- **A cap on concurrent heavy work.** At most :data:`SLOTS` heavy computations run at once, process-wide. A free
  slot goes to the waiting session that has used the least heavy time lately (then first come first served), so
  a visitor who just arrived waits for the computations running, not for the queue of a session that keeps the
  server busy.

A rerun or a closed tab while a session waits gives its place up (the wait ends with Streamlit's own silent stop,
and the newer rerun, if any, starts), so abandoned reruns and reloaded tabs queue nothing. A computation already
running finishes. ``SCAN_VIZ_FAIR_SHARING=0`` turns both limits off (the baseline of benchmarks/bench_fair.py);
they are off under AppTest unless it is ``1``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

ENV_FAIR = "SCAN_VIZ_FAIR_SHARING"
#: Heavy computations at once, process-wide. One keeps a 2-core server's second core for page assembly, media and
#: the websocket; torch's own threads (OMP_NUM_THREADS) work inside each.
SLOTS = 1
#: Reruns with heavy work a session may start back to back, then one every REFILL_S seconds.
BURST = 4
REFILL_S = 1.5
#: Tokens a model load takes (4-5 s of CPU for a bundled model and its gallery).
LOAD_COST = 4
#: How often a waiting session looks at whether it is still wanted.
POLL_S = 0.05
#: A session's heavy time counts for its place in the queue with this time constant (seconds).
USAGE_DECAY_S = 10.0

F = TypeVar("F", bound=Callable)


def enabled() -> bool:
    """``SCAN_VIZ_FAIR_SHARING`` when set (0/1), else on under a real server and off under AppTest, whose
    sessions all share one id (so one rate)."""
    value = os.environ.get(ENV_FAIR, "").strip().lower()
    if value:
        return value not in ("0", "false", "off", "no")
    from streamlit import runtime
    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager

    # AppTest runs scripts under a mock runtime (its upload manager a mock too)
    return runtime.exists() and isinstance(runtime.get_instance().uploaded_file_mgr, MemoryUploadedFileManager)


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
class _Session:
    bucket: TokenBucket
    run: int = 0
    charged_run: int = -1
    used_s: float = 0.0  # heavy seconds, decaying with USAGE_DECAY_S
    used_at: float = 0.0

    def used(self, now: float) -> float:
        return self.used_s * math.exp(-(now - self.used_at) / USAGE_DECAY_S)

    def add_use(self, seconds: float, now: float) -> None:
        self.used_s, self.used_at = self.used(now) + seconds, now


_GATE = FairGate(SLOTS)
_sessions: dict[str, _Session] = {}
_sessions_lock = threading.Lock()
_depth = threading.local()


def _session(session_id: str) -> _Session:
    with _sessions_lock:
        record = _sessions.get(session_id)
        if record is None:
            record = _sessions[session_id] = _Session(TokenBucket(BURST, REFILL_S))
        return record


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

    try:
        if load or record.charged_run != record.run:
            cost = LOAD_COST if load else 1
            _wait(record.bucket.wait_s(cost), abandoned)
            record.bucket.take(cost)
            record.charged_run = record.run
        held = _GATE.slot(abandoned, used=record.used(time.monotonic()))
        held.__enter__()
    except Abandoned:
        raise StopException from None  # Streamlit's silent stop; a pending rerun starts next
    _depth.n = 1
    start = time.monotonic()
    try:
        yield
    finally:
        _depth.n = 0
        record.add_use(time.monotonic() - start, time.monotonic())
        held.__exit__(None, None, None)


def heavy(func: F) -> F:
    """Decorator: ``func`` runs as heavy work (:func:`turn`). Put it under ``st.cache_data``/``cache_resource``,
    so only a cache miss waits."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with turn():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
