"""Evaluate: R@1/5/10 both ways and pointing accuracy on the gallery, and the queries the model gets wrong.

A page script. Scoring every image against every caption takes a while on a CPU, so it runs on request with
a progress bar; the result is kept per (model, gallery, head settings) for every user of the process. When the
gallery's captions carry claims, recall is also shown truth-aware (any image a caption is true of is a hit),
with what the wrongly top-ranked images get wrong; the failure list filters on that.
"""
from __future__ import annotations

import math

import numpy as np
import streamlit as st

from scan_viz.app import state
from scan_viz.app.bundle import NO_BOXES, Bundle
from scan_viz.app.frame import open_in_explore
from scan_viz.app.params import HeadSettings
from scan_viz.app.safe_text import literal, plain, show_error
from scan_viz.app.views import recall_rows
from scan_viz.errors import ScanVizError
from scan_viz.evaluation.truth import ATTRIBUTES, Verdict
from scan_viz.pipeline import evaluate_gallery

FAIL_K_KEY, FAIL_DIR_KEY, FAIL_PAGE_KEY = "ev_k", "ev_dir", "ev_page"
FAIL_TRUTH_KEY, FAIL_WRONG_KEY = "ev_any_true", "ev_wrong"
ANY, ALSO_TRUE = "any", "also true"
#: What the page showed, for tests: the number of failures listed for the chosen K and direction.
FAILURES_MARKER = "evaluate_failures"
PER_PAGE = 15


def run_evaluation(bundle: Bundle, settings: HeadSettings) -> dict | None:
    """Score the gallery with a progress bar; None (after a one-line error) when it cannot be evaluated."""
    n_pairs = len(bundle.gallery) * len(bundle.gallery.captions)
    bar = st.progress(0.0, text=f"Scoring {n_pairs:,} image-caption pairs\u2026")

    def progress(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(1, total)), text=f"Scoring image-caption pairs: {done:,} of {total:,}")

    try:
        result = evaluate_gallery(bundle.model, bundle.gallery, settings.build(bundle.model), progress, details=True)
    except ScanVizError as exc:
        bar.empty()
        show_error(exc)
        return None
    bar.empty()
    return result


def show_metrics(result: dict) -> None:
    left, right = st.columns([3, 2], gap="large")
    with left:
        st.dataframe(recall_rows(result), hide_index=True, width="stretch")
    with right:
        columns = st.columns(2)
        columns[0].metric("rsum", f"{result['rsum']:.1f}", help="Sum of the six recalls (R@1/5/10 both ways)")
        if "pointing_accuracy" in result and not math.isnan(result["pointing_accuracy"]):
            base = result["baselines"]
            columns[1].metric("Pointing accuracy", f"{result['pointing_accuracy']:.1f}%",
                              help=f"random region {base['random']['overall']:.1f}%, "
                                   f"largest region {base['largest']['overall']:.1f}%")
    st.caption(f"{result['n_images']} images, {result['n_captions']} captions. Pointing: a grounded word is a hit "
               "when its most attended region overlaps one of its ground-truth boxes with IoU \u2265 0.5.")


def show_truth(result: dict) -> None:
    """Truth-aware recall and what the wrongly top-ranked images get wrong, or why they are missing."""
    if "truth" not in result:
        st.info(f"Truth-aware recall: not measured; {result.get('truth_note', 'the captions carry no claims')}.")
        return
    truth = result["truth"]
    st.caption("A caption is often true of images other than its own: counting any image the caption is true of "
               f"(any caption true of the image) as a hit. A caption is true of {truth['images_per_caption']:.1f} "
               "gallery images on average.")
    left, right = st.columns([3, 2], gap="large")
    with left:
        st.dataframe(recall_rows(truth), hide_index=True, width="stretch")
    with right:
        st.metric("Truth-aware rsum", f"{truth['rsum']:.1f}", delta=f"{truth['rsum'] - result['rsum']:+.1f} vs strict",
                  delta_color="off")
    mistakes = truth["t2i_mistakes"]
    st.markdown(f"**Text \u2192 image top-1 mistakes: {mistakes['n']:,}** (the top image is not true of the caption; "
                f"{mistakes['genuine']:.0f}% of the {mistakes['strict_failures']:,} strict R@1 failures, the rest "
                "rank an image the caption is just as true of first). What the top image gets wrong:")
    rows = [{"attribute": a, "% of mistakes": round(p, 1)} for a, p in
            sorted(mistakes["attributes"].items(), key=lambda kv: -kv[1])]
    st.dataframe(rows, hide_index=True, height="content")


def show_pointing(result: dict) -> None:
    if not result.get("pointing"):
        st.info("This gallery's captions carry no grounded words, so pointing accuracy cannot be measured.")
        return
    from scan_viz.render import pointing_figure

    base = result["baselines"]
    types = list(result["pointing"])
    rows = [{"word type": t, "pointing accuracy %": round(result["pointing"][t], 1), "words": result["counts"][t],
             "random region %": round(base["random"][t], 1), "largest region %": round(base["largest"][t], 1)}
            for t in types]
    st.plotly_chart(pointing_figure(result["pointing"], base), width="stretch")
    st.dataframe(rows, hide_index=True, height="content")
    if result.get("stuff_words"):
        st.markdown("**Stuff words, one by one**")
        st.dataframe([{"stuff word": plain(w), "pointing accuracy %": round(r["accuracy"], 1), "words": r["count"],
                       "random region %": round(r["random"], 1), "largest region %": round(r["largest"], 1)}
                      for w, r in result["stuff_words"].items()], hide_index=True, height="content")


def failure_rows(result: dict, direction: str, k: int, truth_aware: bool = False, wrong: str = ANY) -> list[int]:
    """Queries whose ground truth ranks at K or worse (0-based rank >= k), worst first.

    ``truth_aware``: any image (caption) the pair is true of counts as ground truth. ``wrong``: only queries
    whose top-1 result fails that attribute (one of ``ATTRIBUTES``), or ``"also true"`` ones whose top 1 is true.
    """
    ranks = np.asarray(result[f"{direction}_truth_ranks" if truth_aware else f"{direction}_ranks"])
    failing = np.flatnonzero(ranks >= k)
    if wrong != ANY:
        verdicts = result[f"{direction}_top_verdict"]
        failing = np.array([q for q in failing if (verdicts[q].holds if wrong == ALSO_TRUE
                                                   else wrong in verdicts[q].attributes)], dtype=np.int64)
    return [int(i) for i in failing[np.argsort(-ranks[failing], kind="stable")]]


def wrong_label(verdict: Verdict) -> str:
    """What the top 1 gets wrong, for the failure list: ``wrong on: count, size``, or that it is also true."""
    if verdict.holds:
        return "nothing wrong: the caption is also true of it"
    return "wrong on: " + ", ".join(verdict.attributes)


def show_failures(result: dict, bundle: Bundle, settings: HeadSettings) -> None:
    gallery = bundle.gallery
    left, right = st.columns([1, 1], gap="large")
    st.session_state.setdefault(FAIL_DIR_KEY, "t2i")
    with left:
        direction = st.segmented_control("Queries", ["t2i", "i2t"], key=FAIL_DIR_KEY, required=True,
                                         persist_state="session",
                                         format_func=lambda d: {"t2i": "captions \u2192 images",
                                                                "i2t": "images \u2192 captions"}[d])
    with right:
        st.session_state.setdefault(FAIL_K_KEY, 10)
        k = int(st.slider("Failure: ground truth not in the top K", 1, 50, key=FAIL_K_KEY, persist_state="session"))
    has_truth = "t2i_top_verdict" in result
    truth_aware, wrong = False, ANY
    if has_truth:
        left, right = st.columns([1, 1], gap="large")
        truth_aware = left.toggle("Any image/caption the pair is true of counts as ground truth", key=FAIL_TRUTH_KEY,
                                  persist_state="session")
        counts = {a: len(failure_rows(result, direction, k, truth_aware, a)) for a in (*ATTRIBUTES, ALSO_TRUE)}
        st.session_state.setdefault(FAIL_WRONG_KEY, ANY)
        wrong = right.selectbox("The model's top 1 is wrong on", (ANY, *ATTRIBUTES, ALSO_TRUE), key=FAIL_WRONG_KEY,
                                persist_state="session",
                                format_func=lambda a: a if a == ANY else f"{a} ({counts[a]})" if a != ALSO_TRUE
                                else f"nothing: also true ({counts[a]})")
    rows = failure_rows(result, direction, k, truth_aware, wrong)
    st.session_state[FAILURES_MARKER] = len(rows)
    ranks = result[f"{direction}_truth_ranks" if truth_aware else f"{direction}_ranks"]
    n_queries = len(ranks)
    st.caption(f"{len(rows)} of {n_queries} queries fail at K = {k}, worst first. \u201cTruth\u201d opens the "
               "ground-truth pair in Explore, \u201cTop 1\u201d the pair the model preferred"
               + ("; under it, what the top 1 gets wrong (hover for why)." if has_truth else "."))
    if not rows:
        st.success("No failures at this K.")
        return
    n_pages = max(1, math.ceil(len(rows) / PER_PAGE))
    page = 1
    if n_pages > 1:
        page = int(st.number_input(f"Page (of {n_pages})", 1, n_pages, key=FAIL_PAGE_KEY))
    header = st.columns([0.7, 4, 1.6, 4, 1, 1])
    for column, title in zip(header, ("rank", "query", "ground truth", "model's top 1")):
        column.markdown(f"**{title}**")
    for q in rows[(page - 1) * PER_PAGE: page * PER_PAGE]:
        row = st.columns([0.7, 4, 1.6, 4, 1, 1], vertical_alignment="center")
        rank = int(ranks[q]) + 1
        row[0].markdown(f"{rank}")
        if direction == "t2i":
            caption = gallery.captions[q]
            truth_id = gallery.ids[int(gallery.caption_image[q])]
            top_id = gallery.ids[int(result["t2i_top"][q])]
            row[1].markdown(literal(caption))  # the gallery file's text
            row[2].markdown(literal(truth_id))
            row[3].markdown(literal(top_id))
            truth_pair, top_pair = (truth_id, caption), (top_id, caption)
        else:
            image_id = gallery.ids[q]
            own = gallery.captions[int(result["i2t_best_own"][q])]
            top = gallery.captions[int(result["i2t_top"][q])]
            row[1].markdown(literal(image_id))
            row[2].markdown(literal(own))
            row[3].markdown(literal(top))
            truth_pair, top_pair = (image_id, own), (image_id, top)
        if has_truth:
            verdict = result[f"{direction}_top_verdict"][q]
            row[3].caption(wrong_label(verdict),
                           help="\n\n".join(literal(r) for r in verdict.reasons) or None)
        if row[4].button("Truth", key=f"ev_truth_{direction}_{q}", help="Open the ground-truth pair in Explore"):
            open_in_explore(*truth_pair, settings, bundle)
        if row[5].button("Top 1", key=f"ev_top_{direction}_{q}", help="Open the model's top pair in Explore"):
            open_in_explore(*top_pair, settings, bundle)


def render() -> None:
    """The Evaluate page."""
    served = state.page_start("Evaluate")
    if served is None:
        return
    bundle, settings = served
    gallery = bundle.gallery
    st.caption(f"{literal(gallery.name)}: {len(gallery)} images, {len(gallery.captions)} captions; head: "
               f"{settings.describe()}.")
    store = state.evaluation_store()
    key = (bundle.key, settings.key())
    if key not in store:
        if not gallery.captions:
            st.info("This gallery has no captions, so there is nothing to evaluate.")
            return
        st.write("Scores every gallery image against every caption with the current head settings, then ranks.")
        if not st.button("Evaluate on the gallery", type="primary", icon=":material/play_arrow:"):
            return
        result = run_evaluation(bundle, settings)
        if result is None:
            return
        state.keep_evaluation(key, result)
    result = store[key]
    show_metrics(result)
    st.subheader("Truth-aware recall")
    show_truth(result)
    st.subheader("Failures")
    show_failures(result, bundle, settings)
    st.subheader("Pointing per word type")
    if gallery.regions.boxes is None:
        st.info(NO_BOXES)
    else:
        show_pointing(result)


if __name__ == "__main__":
    render()
