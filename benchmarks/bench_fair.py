"""One visitor hammering the server while another measures its time to a score: fair sharing off vs on.

For each setting (``SCAN_VIZ_FAIR_SHARING=0``: the baseline, then 1), starts ``streamlit run app.py``
on 127.0.0.1 (bench_load.py's machinery: its server, links and browser sessions) and:

1. warm-up: one session (the server loads the model and gallery);
2. idle: the second visitor opens ``--samples`` Explore deep links one after another, each a fresh session on a
   link no one has opened (its alignment, panels and views computed for it): time from opening to the score;
3. hammered: one session hammers (``--moves`` slider moves on the sidebar's lambda sliders, each to a value not
   seen before, and ``--reloads`` reloads, two moves per reload) while the second visitor opens fresh links as
   in 2, until the hammering ends.

The hammering browser is a Chromium of its own run at ``--hammer-nice`` (default 19): a visitor's browser runs on
the visitor's machine, and here, on the server's own cores, its rendering would otherwise take the CPU from the
server and from the measuring browser alike, which no server setting can share. Every score shown is checked
against the library's. Prints p50 of the second visitor's time to score idle and under hammering, for both
settings, and the ratios; goal: under hammering with fair sharing on, within 2x of idle.

    OMP_NUM_THREADS=1 python benchmarks/bench_fair.py [--samples 6] [--moves 100] [--reloads 50]
        [--hammer-nice 19] [--page-timeout 120]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_load import CHROMIUM, CHROMIUM_ARGS, REPO, Links, Server, Sessions, free_port, percentile  # noqa: E402

SLIDERS = '[data-testid="stSidebar"] [data-testid="stSlider"] input[type="range"]'
ENV_FAIR = "SCAN_VIZ_FAIR_SHARING"


def descendants(roots: set[int]) -> set[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = set(roots), set(roots)
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - tree
        tree |= frontier
    return tree


def renice(pids: set[int], nice: int) -> None:
    for pid in descendants(pids):
        try:
            os.setpriority(os.PRIO_PROCESS, pid, nice)
        except OSError:
            continue  # exited


async def hammer(browser, url: str, link, moves: int, reloads: int, nice: int, roots: set[int]) -> dict:
    """One session: ``moves`` slider moves and ``reloads`` reloads, two moves per reload, never waiting for a
    result (the page is reloaded as soon as it has loaded)."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1600})
    context.set_default_timeout(60_000)
    page = await context.new_page()
    await page.goto(f"{url}/?{urlencode(link.query)}")
    await page.locator(SLIDERS).first.wait_for(state="attached")
    done = {"moves": 0, "reloads": 0}
    start = time.perf_counter()
    per_reload = max(1, moves // max(1, reloads))
    while done["moves"] < moves or done["reloads"] < reloads:
        renice(roots, nice)  # renderers started since are the hammering browser's too
        for _ in range(min(per_reload, moves - done["moves"])):
            # lambda_softmax and lambda_lse in turn, one step up each move: every move a setting not seen before
            slider = page.locator(SLIDERS).nth(done["moves"] % 2)
            await slider.focus()
            await page.keyboard.press("ArrowRight")
            done["moves"] += 1
            await asyncio.sleep(0.1)
        if done["reloads"] < reloads:
            await page.reload(wait_until="domcontentloaded")
            done["reloads"] += 1
            await page.locator(SLIDERS).nth(1).wait_for(state="attached")
    await context.close()
    done["seconds"] = time.perf_counter() - start
    return done


def hammer_link(links: Links, start: int):
    """A link with both lambda sliders in use (LogSumExp) and lambda_softmax at its lowest variant (4), so that
    the moves up stay below the sliders' top (50)."""
    n = start + 500
    while True:
        link = links.make(n)
        if link.query.get("agg", "LogSumExp") == "LogSumExp" and link.query.get("lsm") == "4":
            return link
        n += 1


async def measure(sessions: Sessions, links, until=None) -> list:
    """The second visitor: fresh links one after another (all of ``links``, or until ``until`` is done)."""
    outcomes = []
    for link in links:
        if until is not None and until.done():
            break
        outcomes.append(await sessions.open(link))
    return outcomes


async def one_setting(args, links: Links, fair: bool, offset: int) -> dict:
    from playwright.async_api import async_playwright

    os.environ[ENV_FAIR] = "1" if fair else "0"
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_fair_{os.getpid()}_{int(fair)}.log"
    server = Server(free_port(), args.threads, log)
    results: dict = {"log": log}
    try:
        server.wait()
        async with async_playwright() as playwright:
            before = descendants({os.getpid()})
            hammer_browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            hammer_roots = descendants({os.getpid()}) - before - {server.process.pid}
            hammer_roots -= descendants({server.process.pid})
            renice(hammer_roots, args.hammer_nice)
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            sessions = Sessions(browser, server.url, args.page_timeout)
            results["first"] = (await measure(sessions, [links.make(offset)]))[0]
            results["idle"] = await measure(sessions, [links.make(offset + 1 + n) for n in range(args.samples)])
            start = time.perf_counter()
            task = asyncio.create_task(hammer(hammer_browser, server.url, hammer_link(links, offset), args.moves,
                                              args.reloads, args.hammer_nice, hammer_roots))
            await asyncio.sleep(2)  # the hammering is under way
            pending = [links.make(offset + 100 + n) for n in range(args.max_samples)]
            results["hammered"] = await measure(sessions, pending, until=task)
            results["hammer"] = await task
            results["hammer_wall"] = time.perf_counter() - start
            results["blocked"] = list(sessions.blocked)
            await browser.close()
            await hammer_browser.close()
    finally:
        server.stop()
    results["traceback"] = b"Traceback" in log.read_bytes()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=6, help="the second visitor's links when idle")
    parser.add_argument("--max-samples", type=int, default=40, help="its links at most while hammered")
    parser.add_argument("--moves", type=int, default=100)
    parser.add_argument("--reloads", type=int, default=50)
    parser.add_argument("--hammer-nice", type=int, default=19)
    parser.add_argument("--page-timeout", type=float, default=120)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the server")
    args = parser.parse_args(argv)
    if not CHROMIUM.is_file():
        print(f"error: {CHROMIUM} not found (apt-get install chromium, or set CHROMIUM)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))  # bench_load's Server runs in its own group
    start = time.perf_counter()
    load = os.getloadavg()[0]
    links = Links()
    runs = {}
    for fair, offset in ((False, 0), (True, 1000)):
        runs[fair] = asyncio.run(one_setting(args, links, fair, offset))
    total = time.perf_counter() - start

    def p50(outcomes) -> float:
        return percentile([o.seconds for o in outcomes if o.shown is not None], 50)

    import torch

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores (load average before the run {load:.1f}), "
          f"torch {torch.__version__}, server OMP_NUM_THREADS={args.threads}; served: {links.label}; "
          f"hammering browser at nice {args.hammer_nice}; total run {total:.0f} s")
    print("| second visitor, time to score | fair sharing off (baseline) | fair sharing on |")
    print("|---|---|---|")
    idle = {fair: p50(runs[fair]["idle"]) for fair in runs}
    hammered = {fair: p50(runs[fair]["hammered"]) for fair in runs}
    print(f"| idle, p50 ({args.samples} links) | {idle[False]:.2f} s | {idle[True]:.2f} s |")
    print(f"| under hammering, p50 (links) | {hammered[False]:.2f} s ({len(runs[False]['hammered'])}) | "
          f"{hammered[True]:.2f} s ({len(runs[True]['hammered'])}) |")
    print(f"| under hammering / idle | {hammered[False] / idle[False]:.1f}x | {hammered[True] / idle[True]:.1f}x "
          "(goal: 2x) |")
    print(f"| under hammering, max | {max(o.seconds for o in runs[False]['hammered']):.2f} s | "
          f"{max(o.seconds for o in runs[True]['hammered']):.2f} s |")
    print(f"| hammering: moves / reloads / wall time | {runs[False]['hammer']['moves']} / "
          f"{runs[False]['hammer']['reloads']} / {runs[False]['hammer_wall']:.0f} s | {runs[True]['hammer']['moves']} "
          f"/ {runs[True]['hammer']['reloads']} / {runs[True]['hammer_wall']:.0f} s |")
    correct = {fair: sum(o.correct for o in runs[fair]["idle"] + runs[fair]["hammered"]) for fair in runs}
    counts = {fair: len(runs[fair]["idle"]) + len(runs[fair]["hammered"]) for fair in runs}
    print(f"| second visitor's pages showing their own correct score | {correct[False]} / {counts[False]} | "
          f"{correct[True]} / {counts[True]} |")
    print(f"| requests off 127.0.0.1 (blocked) | {len(runs[False]['blocked'])} | {len(runs[True]['blocked'])} |")
    print(f"after / before under hammering: {hammered[True] / hammered[False]:.2f}")
    bad = any(runs[fair]["traceback"] for fair in runs) or any(correct[f] < counts[f] for f in runs)
    for fair in runs:
        if runs[fair]["traceback"]:
            print(f"the server logged a traceback: see {runs[fair]['log']}", file=sys.stderr)
        else:
            runs[fair]["log"].unlink(missing_ok=True)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
