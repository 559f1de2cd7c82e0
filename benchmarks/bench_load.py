"""The app under load: 16 concurrent browser sessions on 16 different Explore deep links, then a soak.

Starts ``streamlit run app.py`` on 127.0.0.1, drives headless Chromium (one browser, one context per session) and
checks that every page shows its own result: the Score on the page must equal the library's score for that
image, sentence and head settings, computed here with scan_viz (``pipeline.explain``, the app's own call).

1. warm-up: one session (the server loads the model and gallery);
2. 16 sessions at once, each on a different link (gallery image, sentence, direction, K, selected word, and every
   other head parameter the app's links carry): p50/p95 time from opening the link to the score on screen;
3. a warm-up pass over a pool of ``--pool`` other links, then a soak of ``--soak`` requests cycling through that
   pool, ``--parallel`` at a time, each a fresh session (the pool is larger than the app's smallest result caches,
   so entries keep being evicted and recomputed); server RSS after the warm-up pass vs after the soak (goal:
   within 10%).

Each session's time is taken to its score on screen and to its whole word-panel view (every panel image decoded by
the browser). CPU seconds (from /proc) are measured over each phase and divided by its sessions, for the server (all
its threads) and for the browsers (Chromium's processes and Playwright's driver), which share the machine: what a
page costs the server can be told from what it costs the browsers.

Every request a page makes outside 127.0.0.1 is blocked and counted. Prints a markdown table; exits 1 when a
page showed a wrong score or none.

    python benchmarks/bench_load.py [--port 8611] [--sessions 16] [--pool 24] [--soak 200] [--parallel 4]
        [--soak-budget 900] [--page-timeout 300]
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode, urlparse

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
#: The page shows the score rounded (4 decimals today): a page agrees with the library within this.
SCORE_TOLERANCE = 2e-4
#: Head settings the links vary, per HeadSettings field (the app writes each under its key in params.HEAD_KEYS).
VARIANTS = {"agg_func": ("LogSumExp", "Mean", "Max"), "lambda_softmax": (9.0, 4.0, 15.0), "lambda_lse": (6.0, 3.0),
            "raw_feature_norm": ("clipped_l2norm", "softmax", "l2norm")}

#: The full page: the "N word panels" caption under the panel grid, and N panel images decoded by the browser.
FULL_PAGE = """() => {
  const imgs = [...document.querySelectorAll('.st-key-word_panels img')];
  const counts = [...document.querySelectorAll('[data-testid="stCaptionContainer"]')]
    .map(e => e.innerText.trim().match(/^(\\d+) word panels$/)).filter(m => m);
  return counts.length > 0 && imgs.length === Number(counts[0][1])
    && imgs.every(i => i.complete && i.naturalWidth > 0);
}"""


@dataclasses.dataclass(frozen=True)
class Link:
    """One Explore deep link and the score the page must show."""

    query: dict[str, str]
    expected: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (VmRSS of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces and parentheses)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int, reaped: bool = False) -> float:
    """CPU seconds a process has used so far, all its threads (utime + stime of /proc/<pid>/stat); ``reaped``:
    plus its children that have exited and been waited for (cutime + cstime)."""
    fields = _stat(pid)
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if reaped else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def browser_cpu_seconds(server_pid: int) -> float:
    """CPU seconds of this process's descendants but the server: Playwright's driver and every Chromium process.

    A closed session's renderer exits, and its time moves to the Chromium process that waits for it (cutime), so
    summing the living processes with their reaped children counts every session's browser work.
    """
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue  # exited while listed
    tree, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier and pid != server_pid} - tree
        tree |= frontier
    total = 0.0
    for pid in tree:
        try:
            total += cpu_seconds(pid, reaped=True)
        except OSError:
            continue
    return total


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


class Links:
    """Deep links over the served gallery, each with the library's score for it."""

    def __init__(self) -> None:
        from scan_viz.app.bundle import Sources
        from scan_viz.app.params import HeadSettings
        from scan_viz.gallery import load_gallery
        from scan_viz.model import load_model

        sources = Sources.from_env()
        self.model = load_model(sources.model, vocab=sources.vocab)
        self.gallery = load_gallery(sources.gallery)
        self.defaults = HeadSettings.from_config(self.model.config)
        self.label = f"{sources.model_label()} on {self.gallery.name}"

    def make(self, n: int) -> Link:
        """Link ``n``: its image, sentence, view and head settings all depend on ``n``; the query is what the app
        itself writes for them (``params.explore_query``)."""
        from scan_viz.app.params import ExploreParams, HeadSettings, explore_query, settings_fields
        from scan_viz.pipeline import explain, gallery_regions

        gallery = self.gallery
        image_id = gallery.ids[(n * 37) % len(gallery)]
        own = gallery.captions_of(image_id)
        # half the links use one of the image's captions, half a caption of another image
        text = own[n % len(own)] if n % 4 < 2 else gallery.captions[(n * 101 + 7) % len(gallery.captions)]
        changes = {field: values[(n // 2 + i) % len(values)] for i, (field, values) in enumerate(VARIANTS.items())}
        settings = HeadSettings.for_head(("scan_t2i", "scan_i2t")[n % 2], self.model.config, changes)
        expected = explain(self.model, gallery_regions(gallery, image_id), text, settings.build(self.model)).score
        params = ExploreParams(image=image_id, q=text, k=3 + n % 8, word=text.split()[-1].lower() if n % 3 == 0
                               else None, **settings_fields(settings, self.defaults, self.model.config))
        return Link(explore_query(params), float(expected))

    def distinct(self, count: int, start: int = 0) -> list[Link]:
        """``count`` links whose expected scores differ by more than the display tolerance (so a page showing
        another session's result is caught)."""
        links: list[Link] = []
        n = start
        while len(links) < count:
            link = self.make(n)
            n += 1
            if all(abs(link.expected - other.expected) > 2 * SCORE_TOLERANCE for other in links):
                links.append(link)
        return links


class Server:
    """``streamlit run app.py`` on 127.0.0.1:port, stopped on exit."""

    def __init__(self, port: int, threads: int, log: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.headless", "true",
                 "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats",
                 "false"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"streamlit exited with status {self.process.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"streamlit did not answer within {timeout_s:.0f} s")

    def rss_mb(self) -> float:
        return rss_mb(self.process.pid)

    def cpu(self) -> tuple[float, float]:
        """(server, browsers) CPU seconds so far."""
        return cpu_seconds(self.process.pid), browser_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)


@dataclasses.dataclass
class Outcome:
    """One session: seconds until its score was on screen, until its whole word-panel view was (None when it
    never was), and the score shown."""

    seconds: float
    full_seconds: float | None
    shown: float | None
    expected: float

    @property
    def correct(self) -> bool:
        return self.shown is not None and abs(self.shown - self.expected) <= SCORE_TOLERANCE


class Sessions:
    """Browser sessions against the server, each a fresh context; requests off 127.0.0.1 are blocked."""

    def __init__(self, browser, url: str, timeout_s: float) -> None:
        self.browser = browser
        self.url = url
        self.timeout_ms = timeout_s * 1000
        self.blocked: list[str] = []

    async def _route(self, route) -> None:
        if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
            await route.continue_()
        else:
            self.blocked.append(route.request.url)
            await route.abort()

    async def open(self, link: Link) -> Outcome:
        """Open ``link`` in a new session; seconds until the score is on screen, until every word panel is, and
        the score shown."""
        context = await self.browser.new_context(viewport={"width": 1400, "height": 1600})
        context.set_default_timeout(self.timeout_ms)  # navigation included: the page load waits on the server too
        start = time.perf_counter()
        try:
            await context.route("**/*", self._route)
            page = await context.new_page()
            await page.goto(f"{self.url}/?{urlencode(link.query)}")
            # the summary line: "**Score** 0.1234" (Markdown) above the word and region counts
            score = page.locator("p", has=page.locator("strong", has_text=re.compile(r"^Score$"))).first
            await score.wait_for(timeout=self.timeout_ms)
            seconds = time.perf_counter() - start
            match = re.search(r"Score\s+(-?\d+(?:\.\d+)?)", await score.inner_text())
            shown = float(match.group(1)) if match else None
            await page.wait_for_function(FULL_PAGE, timeout=self.timeout_ms)
            return Outcome(seconds, time.perf_counter() - start, shown, link.expected)
        except Exception as exc:  # a page that never shows its score counts as wrong, with its time
            print(f"  failed: {link.query} ({type(exc).__name__})", file=sys.stderr)
            return Outcome(time.perf_counter() - start, None, None, link.expected)
        finally:
            await context.close()

    async def concurrent(self, links: list[Link]) -> list[Outcome]:
        return list(await asyncio.gather(*(self.open(link) for link in links)))

    async def pool(self, links: list[Link], parallel: int, budget_s: float = float("inf")) -> list[Outcome]:
        """``links`` opened ``parallel`` at a time; none is started after ``budget_s`` seconds."""
        queue = list(reversed(links))
        outcomes: list[Outcome] = []
        deadline = time.perf_counter() + budget_s

        async def worker() -> None:
            while queue and time.perf_counter() < deadline:
                outcomes.append(await self.open(queue.pop()))

        await asyncio.gather(*(worker() for _ in range(parallel)))
        return outcomes


async def run(args: argparse.Namespace, server: Server, links: Links) -> dict:
    from playwright.async_api import async_playwright

    results: dict = {}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        sessions = Sessions(browser, server.url, args.page_timeout)
        results["rss_idle"] = server.rss_mb()

        async def phase(name: str, work) -> list[Outcome]:
            """Run ``work``; its server and browser CPU seconds go under cpu_<name>."""
            before = server.cpu()
            outcomes = await work
            results[f"cpu_{name}"] = tuple(after - b for after, b in zip(server.cpu(), before))
            return outcomes

        results["first"] = (await phase("first", sessions.concurrent([links.make(10_000)])))[0]
        results["rss_before"] = server.rss_mb()
        burst = links.distinct(args.sessions)
        start = time.perf_counter()
        results["burst"] = await phase("burst", sessions.concurrent(burst))
        results["burst_wall"] = time.perf_counter() - start
        results["burst_links"] = burst
        results["rss_after_burst"] = server.rss_mb()
        pool = [links.make(20_000 + n) for n in range(args.pool)]
        results["warm"] = await phase("warm", sessions.pool(pool, args.parallel))
        results["rss_warm"] = server.rss_mb()
        soak_links = [pool[n % len(pool)] for n in range(args.soak)]
        start = time.perf_counter()
        results["soak"] = await phase("soak", sessions.pool(soak_links, args.parallel, args.soak_budget))
        results["soak_wall"] = time.perf_counter() - start
        await asyncio.sleep(2)  # let the server drop the closed sessions
        results["rss_soak"] = server.rss_mb()
        results["blocked"] = list(sessions.blocked)
        await browser.close()
    return results


def spread(seconds: list[float | None], maximum: bool = True) -> str:
    """p50 / p95 (/ max) of the sessions that got there, and how many did not."""
    done = [s for s in seconds if s is not None]
    if not done:
        return "none"
    values = [percentile(done, 50), percentile(done, 95)] + ([max(done)] if maximum else [])
    text = " / ".join(f"{v:.2f} s" for v in values)
    return text + (f" ({len(seconds) - len(done)} never)" if len(done) < len(seconds) else "")


def report(args: argparse.Namespace, links: Links, results: dict, total_s: float) -> None:
    import torch

    burst, soak = results["burst"], results["soak"]
    times = [o.seconds for o in burst]
    soak_times = [o.seconds for o in soak]
    growth = (results["rss_soak"] - results["rss_warm"]) / results["rss_warm"] * 100
    carried = sorted({k for link in results["burst_links"] for k in link.query})
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores (load average before the run "
          f"{results['load']:.1f}), torch {torch.__version__}, server OMP_NUM_THREADS={args.threads}")
    print(f"served: {links.label}; links carry {', '.join(carried)}; one Chromium, one context per session; "
          f"total run {total_s:.0f} s")
    print("| what | value |")
    print("|---|---|")
    print(f"| first session (server loads the bundle) | {results['first'].seconds:.2f} s |")
    print(f"| {args.sessions} concurrent sessions, time to result p50 / p95 / max | {percentile(times, 50):.2f} s / "
          f"{percentile(times, 95):.2f} s / {max(times):.2f} s |")
    print(f"| {args.sessions} concurrent sessions, time to every word panel p50 / p95 / max | "
          f"{spread([o.full_seconds for o in burst])} |")
    print(f"| {args.sessions} concurrent sessions, wall time for all | {results['burst_wall']:.2f} s |")
    print(f"| {args.sessions} concurrent sessions showing their own correct score | "
          f"{sum(o.correct for o in burst)} / {len(burst)} |")
    print(f"| soak: {len(soak)} sessions over {args.pool} links, {args.parallel} at a time, time to result "
          f"p50 / p95 | {percentile(soak_times, 50):.2f} s / {percentile(soak_times, 95):.2f} s |")
    print(f"| soak: time to every word panel p50 / p95 | {spread([o.full_seconds for o in soak], maximum=False)} |")
    print(f"| soak: wall time (budget {args.soak_budget:.0f} s) | {results['soak_wall']:.0f} s |")
    for who, side in (("server", 0), ("browser (Chromium and Playwright)", 1)):
        per_session = [results["cpu_" + part][side] / max(1, len(results[part])) for part in ("burst", "warm", "soak")]
        print(f"| {who} CPU per session: first / {args.sessions} concurrent / warm-up pass / soak | "
              f"{results['cpu_first'][side]:.2f} / {' / '.join(f'{c:.2f}' for c in per_session)} s |")
    print(f"| warm-up and soak sessions showing their own correct score | "
          f"{sum(o.correct for o in results['warm'] + soak)} / {len(results['warm']) + len(soak)} |")
    print(f"| server RSS: idle / after first session / after the {args.sessions} sessions | "
          f"{results['rss_idle']:.0f} / {results['rss_before']:.0f} / {results['rss_after_burst']:.0f} MB |")
    print(f"| server RSS: after the warm-up pass / after the soak | {results['rss_warm']:.0f} / "
          f"{results['rss_soak']:.0f} MB ({growth:+.1f}%, goal within 10%) |")
    hosts = sorted({urlparse(url).hostname or url for url in results["blocked"]})
    print(f"| requests off 127.0.0.1 (blocked) | {len(results['blocked'])}"
          f"{' to ' + ', '.join(hosts) if hosts else ''} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="server port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--pool", type=int, default=24, help="links of the warm-up pass, which the soak cycles")
    parser.add_argument("--soak", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=4, help="soak sessions at a time")
    parser.add_argument("--soak-budget", type=float, default=900, help="seconds after which no soak session starts")
    parser.add_argument("--page-timeout", type=float, default=300, help="seconds a page may take to show its score")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the server")
    args = parser.parse_args(argv)
    if not CHROMIUM.is_file():
        print(f"error: {CHROMIUM} not found (apt-get install chromium, or set CHROMIUM)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    start = time.perf_counter()
    links = Links()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_load_{os.getpid()}.log"
    server = Server(args.port or free_port(), args.threads, log)

    def stop(*_) -> None:  # a plain `kill` stops the server too; Chromium's driver exits with this process
        server.stop()
        os._exit(143)

    signal.signal(signal.SIGTERM, stop)
    try:
        server.wait()
        load = os.getloadavg()[0]
        results = asyncio.run(run(args, server, links))
        results["load"] = load
    finally:
        server.stop()
    report(args, links, results, time.perf_counter() - start)
    wrong = [o for o in results["burst"] + results["warm"] + results["soak"] if not o.correct]
    if b"Traceback" in log.read_bytes():
        print(f"the server logged a traceback: see {log}", file=sys.stderr)
        return 1
    log.unlink(missing_ok=True)
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
