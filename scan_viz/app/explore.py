"""Explore: one image and one sentence, the words' attention over the regions, and what each part contributes.

A page script (``streamlit run app.py`` runs it as ``__main__``); importable for its helpers. The URL carries
``?image=ID&q=SENTENCE``, the view (``word``, ``k``), the served model and the head settings (the keys are listed
in :mod:`scan_viz.app.params`): opening such a link shows that pair's word panels with no click.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time

import numpy as np
import streamlit as st

from scan_viz.app import state, upload_guard
from scan_viz.app.bundle import (NO_MATCH, Bundle, detector_name, drawing_note, is_own_caption, model_domain,
                                 model_label, search_gallery)
from scan_viz.app.params import DEFAULT_K, K_MAX, ExploreParams, HeadSettings
from scan_viz.app.safe_text import literal, plain, show_error
from scan_viz.app.uploads import MAX_UPLOAD_MB, UPLOAD_FORMATS_TEXT, UPLOAD_TYPES
from scan_viz.app.views import ablation_figures, ablation_note, bar_figure, region_rows, relevance_rows
from scan_viz.errors import ScanVizError
from scan_viz.limits import check_sentence
from scan_viz.regions.domain import DRAWN_MEASURED, DRAWN_THRESHOLD
from scan_viz.render import FLAT_FACTOR, content_words, region_relevance_bars, word_label, word_relevance_bars
from scan_viz.types import Alignment, Regions

SOURCE_KEY, IMAGE_KEY, UPLOAD_KEY = "ex_source", "ex_image", "ex_upload"
Q_KEY, WORD_KEY, K_KEY, COMPARE_KEY = "q", "ex_word", "ex_k", "ex_compare"
SEARCH_KEY, THUMB_PAGE_KEY, TAB_KEY, EXAMPLES_KEY = "ex_search", "ex_thumb_page", "ex_tab", "ex_examples"
LINK_WORD_KEY = "_ex_link_word"
#: What the page drew, for tests and the browser check: the words that got a panel; the heads compared.
PANELS_MARKER, COMPARE_MARKER = "explore_panels", "explore_compared"
#: The pair's rank among the gallery's images for the sentence, and the truth verdict shown (for tests).
RANK_MARKER, VERDICT_MARKER = "explore_rank", "explore_verdict"
#: Whether the upload looked like the gallery's pictures (None: not checked), for tests.
DOMAIN_MARKER = "explore_in_domain"
GALLERY, UPLOAD = "Gallery", "Upload"
PANEL_COLUMNS = 4
THUMB_COLUMNS, THUMB_ROWS = 6, 2
TABS = ("Word panels", "Interactive", "Image \u2192 text", "Relevance", "Ablation")
#: A picked image that cannot be drawn for a reason the gallery does not explain (a detector without boxes).
NO_DRAWING = "these regions carry no boxes: nothing can be drawn; the score and relevance are computed from them"
#: How the pair's score line starts (tests read the score after it).
SCORE_LABEL = "**Score**"


@dataclasses.dataclass
class Picked:
    """The image being explored: its pixels, its regions and a cache key (``gallery:ID`` or ``upload:SHA``).

    ``image`` is None for a gallery without pictures; with it or without boxes (``regions.boxes`` None) nothing
    is drawn and the pair is shown as text (:attr:`drawable`)."""

    key: str
    image: np.ndarray | None
    regions: Regions
    image_id: str | None  # gallery id; None for an upload
    title: str

    @property
    def drawable(self) -> bool:
        return self.image is not None and self.regions.boxes is not None


# ----------------------------------------------------------------------------- deep link


def apply_deep_link(params: ExploreParams, own_head: str) -> None:
    """Copy a new link's pair and view into the session (the frame has applied its model and head settings);
    ``own_head``: the served model's own head, what ``compare=scan`` names."""
    if params.image is not None:
        st.session_state[IMAGE_KEY] = params.image
        st.session_state[SOURCE_KEY] = GALLERY
    if params.q is not None:
        st.session_state[Q_KEY] = params.q
    st.session_state[LINK_WORD_KEY] = params.word
    st.session_state.pop(WORD_KEY, None)
    st.session_state[K_KEY] = params.k if params.k is not None else DEFAULT_K
    st.session_state[COMPARE_KEY] = params.compared(own_head)


def write_deep_link(bundle: Bundle, settings: HeadSettings, picked: Picked | None, sentence: str | None,
                    word: str | None) -> None:
    """Put the current pair and view into the URL (image and sentence, then what differs from the defaults)."""
    k = st.session_state.get(K_KEY, DEFAULT_K)
    compare = ",".join(st.session_state.get(COMPARE_KEY) or []) or None
    state.write_link({"image": picked.image_id if picked is not None else None, "q": sentence, "word": word,
                      "k": k if k != DEFAULT_K else None, "compare": compare, **state.link_fields(bundle, settings)})


def forget_pair() -> None:
    """Drop the explored image: another gallery is being served."""
    for key in (IMAGE_KEY, UPLOAD_KEY, WORD_KEY, LINK_WORD_KEY):
        st.session_state.pop(key, None)


# ----------------------------------------------------------------------------- choosing the image


def _pick(image_id: str) -> None:
    st.session_state[IMAGE_KEY] = image_id
    st.session_state[SOURCE_KEY] = GALLERY


def gallery_picker(bundle: Bundle) -> None:
    """Thumbnails of the gallery, searchable by caption words; a click picks the image."""
    gallery = bundle.gallery
    current = st.session_state.get(IMAGE_KEY)
    # a stateful expander: its thumbnails are drawn (and fetched by the browser) only while it is open, and a
    # deep link opens it closed. A new label (another image picked) is a new expander, closed again.
    with st.expander("Gallery images" + (f" \u2014 showing {literal(current)}" if current else ""),
                     expanded=current is None, icon=":material/photo_library:", on_change="rerun") as picker:
        if not picker.open:
            return
        search = st.text_input("Find images by caption words", key=SEARCH_KEY, placeholder="e.g. red car",
                               persist_state="session",
                               help="Images with a caption holding every word typed (whole words), or that id.")
        ids = search_gallery(gallery, search)
        per_page = THUMB_COLUMNS * THUMB_ROWS
        n_pages = max(1, math.ceil(len(ids) / per_page))
        left, right = st.columns([3, 1], vertical_alignment="bottom")
        with right:
            page = 1
            if n_pages > 1:
                page = int(st.number_input(f"Page (of {n_pages})", 1, n_pages, key=THUMB_PAGE_KEY,
                                           persist_state="session"))
        with left:
            st.caption(f"{len(ids)} of {len(gallery)} images" + (f" match {literal(search.strip())}"
                                                                  if search.strip() else ""))
        if not ids:
            st.info(NO_MATCH)
            return
        shown = ids[(page - 1) * per_page: page * per_page]
        for start in range(0, len(shown), THUMB_COLUMNS):
            columns = st.columns(THUMB_COLUMNS)
            for column, image_id in zip(columns, shown[start:start + THUMB_COLUMNS]):
                with column:
                    captions = gallery.captions_of(image_id)
                    if gallery.has_image(image_id):
                        st.image(state.thumbnail(bundle.key, image_id), width="stretch")
                    elif captions:  # no picture to recognise it by: its first caption, as text
                        st.caption(literal(captions[0]))
                    # ids and captions are the gallery files' text: a label and its help render Markdown
                    st.button(literal(image_id), key=f"pick_{image_id}", on_click=_pick, args=(image_id,),
                              width="stretch", type="primary" if image_id == current else "secondary",
                              help=literal(captions[0]) if captions else None)


def picked_gallery_image(bundle: Bundle) -> Picked | None:
    """The chosen gallery image, or None (after an error for an id the gallery lacks)."""
    from scan_viz.pipeline import gallery_regions

    image_id = st.session_state.get(IMAGE_KEY)
    if not image_id:
        return None
    try:
        regions = gallery_regions(bundle.gallery, image_id)
    except ScanVizError as exc:
        show_error(exc)
        st.session_state[IMAGE_KEY] = None
        return None
    image = state.gallery_image(bundle.key, image_id) if bundle.gallery.has_image(image_id) else None
    return Picked(f"gallery:{image_id}", image, regions, image_id, image_id)


def picked_upload(bundle: Bundle) -> Picked | None:
    """The uploaded image with the detector's regions, or None (after a one-line error)."""
    uploaded = upload_guard.file_uploader(f"Upload an image ({UPLOAD_FORMATS_TEXT}, up to {MAX_UPLOAD_MB} MB)",
                                          type=list(UPLOAD_TYPES), key="ex_uploader", max_upload_size=MAX_UPLOAD_MB)
    if uploaded is not None:
        st.session_state[UPLOAD_KEY] = (uploaded.name, uploaded.getvalue())
    stored = st.session_state.get(UPLOAD_KEY)
    if stored is None:
        st.info("Upload a photo; the detector finds its regions, then SCAN aligns your sentence with them.")
        return None
    name, data = stored
    return load_upload(bundle, name, data)


def load_upload(bundle: Bundle, name: str, data: bytes) -> Picked | None:
    """Decode and detect an upload; a bad file or a model without a detector is a one-line error."""
    key = state.content_key(data)
    if detector_name(bundle.model, bundle.sources) is None:
        st.error("this model names no detector, so an upload cannot be turned into regions: give a detector folder "
                 "on the Model page, or explore the gallery's images")
        return None
    try:
        image = state.decoded_upload(key, data, name)
        with st.status(f"Finding regions with {detector_name(bundle.model, bundle.sources)}\u2026",
                       expanded=False) as progress:
            started = time.perf_counter()
            regions = state.detected_regions(bundle.key, key, image)
            progress.update(label=f"{len(regions)} regions found ({time.perf_counter() - started:.1f} s)",
                            state="complete")
    except ScanVizError as exc:
        show_error(exc)
        st.session_state[UPLOAD_KEY] = None  # shown once; the uploader still holds the file to replace
        return None
    if len(regions) == 0:
        show_error(f"the detector found no regions in {name}: try another image")
        return None
    in_domain = state.shown(lambda: state.upload_in_domain(bundle.key, key, regions))
    flatness = state.upload_row_flatness(bundle.key, key, image)
    if flatness is not None and flatness >= DRAWN_THRESHOLD:
        st.session_state[DOMAIN_MARKER] = False
        st.warning(f"Out of domain: this looks like a generated drawing, not a photograph, and this model was built "
                   f"for photographs. {flatness:.1%} more of its side-by-side pixel pairs than of its stacked ones "
                   f"are exactly one colour, as in a rendered gradient; the check calls {DRAWN_THRESHOLD:.1%} or more "
                   f"a drawing, which in our measurement {DRAWN_MEASURED}. Here its attention and scores carry "
                   "little meaning.", icon=":material/info:")
        return Picked(f"upload:{key}", image, regions, None, name)
    st.session_state[DOMAIN_MARKER] = in_domain
    if in_domain is False:
        domain = model_domain(bundle.model)
        trained = f"; this model was trained only on {literal(domain)}" if domain else ""
        st.warning(f"Out of domain: this picture's regions are less like the gallery's than those of any of "
                   f"{bundle.index.domain_check.n_calibration} sampled gallery images{trained}. Here its attention "
                   "and scores carry little meaning.", icon=":material/info:")
    return Picked(f"upload:{key}", image, regions, None, name)


# ----------------------------------------------------------------------------- the views


def show_panels(picked: Picked, alignment: Alignment, bundle: Bundle, settings: HeadSettings) -> None:
    """The SCAN paper's view: one panel per word, lit where it attends, strongest region outlined."""
    panels = state.panels(bundle.key, picked.key, alignment.text, settings.key(), picked.image, alignment)
    st.session_state[PANELS_MARKER] = [p.word for p in panels]
    st.caption(f"Each word's panel: the {alignment.attention_label} (bright = high); yellow: its strongest region "
               f"and weight, left out when the map is flat (no region gets {FLAT_FACTOR:g} times its even share)"
               + (f"; {alignment.word_relevance_label} per word under the panel." if alignment.word_relevance
                  is not None else "."))
    with st.container(key="word_panels"):
        for start in range(0, len(panels), PANEL_COLUMNS):
            columns = st.columns(PANEL_COLUMNS)
            for column, panel in zip(columns, panels[start:start + PANEL_COLUMNS]):
                column.image(panel.jpeg, caption=literal(panel.caption), width="stretch")
    st.caption(f"{len(panels)} word panels")
    downloads(picked, alignment, bundle, settings)


def downloads(picked: Picked, alignment: Alignment, bundle: Bundle, settings: HeadSettings) -> None:
    """The panel grid as PNG and SVG (the paper's matplotlib figure, drawn on click), the alignment as JSON
    (``scan-viz explain``'s schema: the image, the model, the head and its parameters, the version)."""
    from scan_viz.pipeline import alignment_json
    from scan_viz.render import figure_to_png, figure_to_svg, word_panels

    stem = (picked.image_id or "upload").replace("/", "_")
    image = picked.image
    row = st.container(horizontal=True, gap="small")
    row.download_button("Panels (PNG)", lambda: figure_to_png(word_panels(image, alignment)),
                        file_name=f"{stem}-panels.png", mime="image/png", icon=":material/download:",
                        on_click="ignore")
    row.download_button("Panels (SVG)", lambda: figure_to_svg(word_panels(image, alignment)),
                        file_name=f"{stem}-panels.svg", mime="image/svg+xml", icon=":material/download:",
                        on_click="ignore")
    source = ({"gallery": bundle.gallery.name, "id": picked.image_id} if picked.image_id is not None
              else {"file": picked.title})
    record = alignment_json(alignment, settings.build(bundle.model), bundle.sources.model_label(), source)
    row.download_button("Alignment (JSON)", json.dumps(record, indent=1),
                        file_name=f"{stem}-alignment.json", mime="application/json", icon=":material/download:",
                        on_click="ignore")


def resolve_word(alignment: Alignment) -> int:
    """The word the interactive view shows: a link's ``word``, else the user's pick, else the first word."""
    words = content_words(alignment)
    wanted = st.session_state.pop(LINK_WORD_KEY, None)
    if wanted is not None:
        match = [i for i in words if alignment.words[i] == wanted]
        if match:
            st.session_state[WORD_KEY] = match[0]
        else:
            st.warning(f"the link's word {literal(wanted)} is not in the sentence: showing the first word")
    if st.session_state.get(WORD_KEY) not in words:
        st.session_state[WORD_KEY] = words[0]
    return int(st.session_state[WORD_KEY])


def show_interactive(picked: Picked, alignment: Alignment) -> None:
    from scan_viz.render import plotly_alignment

    choice = st.pills("Word", content_words(alignment), key=WORD_KEY, required=True, persist_state="session",
                      wrap=True, format_func=lambda i: literal(word_label(alignment, i, numbered=True)))
    st.caption("Hover a region for its weight for every word; box opacity = the chosen word's attention weight, "
               "on one 0-1 scale for every word (the colour bar).")
    st.plotly_chart(plotly_alignment(picked.image, alignment, word=int(choice)), width="content",
                    config={"displaylogo": False})


def show_i2t(picked: Picked, alignment: Alignment, bundle: Bundle, settings: HeadSettings) -> None:
    n_regions = len(picked.regions)
    st.session_state[K_KEY] = int(min(max(st.session_state.get(K_KEY, DEFAULT_K), 1), min(K_MAX, n_regions)))
    k = st.slider("Regions shown", 1, max(2, min(K_MAX, n_regions)), key=K_KEY, persist_state="session",
                  help="The regions with the highest relevance (i2t) or the most attention received (t2i).")
    st.caption("For each region: its crop, and the sentence shaded by the attention between that region and each "
               "word, on one 0-1 scale for the whole figure (the colour bar).")
    png = state.region_words_png(bundle.key, picked.key, alignment.text, settings.key(), int(k), picked.image,
                                 alignment)
    st.image(png, width="content")
    if alignment.region_relevance is not None:
        st.dataframe(region_rows(alignment, int(k)), hide_index=True, height="content")


def show_relevance(alignment: Alignment) -> None:
    for bars in (word_relevance_bars(alignment), region_relevance_bars(alignment, 12)):
        if bars is not None:
            st.plotly_chart(bar_figure(bars), width="stretch")
    st.dataframe(relevance_rows(alignment), hide_index=True, height="content")


def show_ablation(picked: Picked, alignment: Alignment, bundle: Bundle, settings: HeadSettings) -> None:
    result = state.ablation(bundle.key, picked.key, alignment.text, settings.key(), picked.regions)
    st.caption(f"Score {result['score']:.4f}. Each bar: the score after removing one word (left) or one region "
               "(right), minus the full score. A large drop marks what the match relies on.")
    note = ablation_note(result)
    if note:
        st.markdown(note)
    for column, figure in zip(st.columns(2), ablation_figures(alignment, result, top=12)):
        with column:
            st.plotly_chart(figure, width="stretch")


def gallery_rank_line(alignment: Alignment, picked: Picked, bundle: Bundle, settings: HeadSettings) -> str:
    """The score's scale: the rank this image takes among the gallery's images for the sentence (an upload: the
    rank it would take), or "" when the gallery is empty or scoring it failed (its error is shown)."""
    from scan_viz.pipeline import gallery_rank

    if not len(bundle.gallery):
        return ""
    scores = state.shown(lambda: state.sentence_scores(bundle.key, alignment.text, settings.key()))
    if scores is None:
        return ""
    if picked.image_id is not None:
        rank = gallery_rank(scores, scores[bundle.gallery.index_of(picked.image_id)])
        line = f"rank {rank:,} of the gallery's {len(scores):,} images for this sentence"
    else:
        rank = gallery_rank(scores, alignment.score)
        line = f"would rank {rank:,} among the gallery's {len(scores):,} images for this sentence"
    st.session_state[RANK_MARKER] = rank
    return line


def show_verdict(alignment: Alignment, picked: Picked, bundle: Bundle, column) -> None:
    """For a gallery image: whether the sentence is its own caption, else, when the sentence is a gallery caption
    with claims, whether it is true of this image and what is wrong (the truth check, as Retrieve shows it)."""
    from scan_viz.evaluation.truth import caption_holds

    gallery = bundle.gallery
    if picked.image_id is None or not bundle.has_captions():
        return
    if is_own_caption(gallery, picked.image_id, alignment.text):
        st.session_state[VERDICT_MARKER] = "own"
        column.success("This sentence is one of the image's own captions.", icon=":material/check:")
        return
    claims = gallery.claims_of(alignment.text)
    if claims is None:
        return
    verdict = caption_holds(claims, gallery.scenes[gallery.index_of(picked.image_id)])
    st.session_state[VERDICT_MARKER] = "true" if verdict.holds else "false"
    if verdict.holds:
        column.info("Another image's caption, and true of this one too: every claim it makes holds here.",
                    icon=":material/check:")
    else:
        column.warning(f"Another image's caption, false of this one (wrong on: {', '.join(verdict.attributes)}):",
                       icon=":material/close:")
        column.text("\n".join(plain(reason) for reason in verdict.reasons))


def show_summary(alignment: Alignment, picked: Picked, bundle: Bundle, settings: HeadSettings) -> None:
    """Score and its rank in the gallery, unknown words and, for a gallery caption, whether the pair is a
    ground-truth match or the caption is true of the image."""
    words = content_words(alignment)
    unknown = [alignment.words[i] for i in words if alignment.unknown[i]]
    rank = gallery_rank_line(alignment, picked, bundle, settings)
    # plain Markdown, not st.metric: a metric cuts a long value short ("-0.25..."); one full-width line, since a
    # column of the text's width broke the rank over four lines at 1,024 px
    st.markdown(f"{SCORE_LABEL} {alignment.score:.4f} \u00b7 " + (f"{rank}  \n" if rank else "")
                + f"{len(words)} words \u00b7 {len(picked.regions)} regions",
                help=f"{alignment.head} pair score, to 4 decimals. A score means little alone: the rank says how it "
                     "compares with the gallery's images for the same sentence (1 = the head's top image; ties count "
                     "in the image's favour).")
    show_verdict(alignment, picked, bundle, st.container())
    if unknown and len(unknown) == len(words):
        st.warning(f"None of the words is in the model's vocabulary ({', '.join(map(literal, unknown))}): each "
                   "reads as `<unk>`, so the alignment says nothing about this sentence.", icon=":material/warning:")
    elif unknown:
        st.info(f"{len(unknown)} word(s) not in the vocabulary, read as `<unk>`: {', '.join(map(literal, unknown))}")


def sentence_box(bundle: Bundle, picked: Picked | None):
    """The sentence field and the picked image's captions as one-click examples; returns the text column."""
    image_column, text_column = st.columns([1, 2], gap="large")
    with text_column:
        st.text_input("Sentence", key=Q_KEY, placeholder="describe the image, e.g. a red car on the road",
                      persist_state="session", on_change=state.drop_bidi, args=(Q_KEY,))
        captions = bundle.gallery.captions_of(picked.image_id) if picked and picked.image_id else []
        if captions:
            st.pills("This image's captions (click one to use it)", captions, key=EXAMPLES_KEY,
                     on_change=state.use_choice, args=(EXAMPLES_KEY, Q_KEY), wrap=True, format_func=literal)
    with image_column:
        if picked is not None and picked.image is not None:
            st.image(state.shown_image(bundle.key, picked.key, picked.image), caption=literal(picked.title),
                     width="stretch")
            label = model_label(bundle.model)
            if label:  # what the served model is, beside the picture it is read by (issue 19)
                st.caption(literal(label))
    return text_column


def show_views(picked: Picked, alignment: Alignment, bundle: Bundle, settings: HeadSettings) -> None:
    """The five views of one alignment, as tabs that compute only when opened."""
    tabs = st.tabs(list(TABS), key=TAB_KEY, on_change="rerun")
    views = (lambda: show_panels(picked, alignment, bundle, settings),
             lambda: show_interactive(picked, alignment),
             lambda: show_i2t(picked, alignment, bundle, settings),
             lambda: show_relevance(alignment),
             lambda: show_ablation(picked, alignment, bundle, settings))
    for tab, view in zip(tabs, views):
        with tab:
            if tab.open:
                state.shown(view)


def compare_settings(bundle: Bundle, settings: HeadSettings, heads: list[str]) -> list[HeadSettings]:
    """Each compared head's settings: the sidebar's for the head chosen there, the model's own for the others."""
    return [settings if head == settings.head else HeadSettings.for_head(head, bundle.model.config) for head in heads]


def show_compare(picked: Picked, sentence: str, bundle: Bundle, settings: HeadSettings) -> None:
    """The same image and sentence under two or more heads side by side: each head's picture of its alignment,
    its score and the rank of this image among the gallery's for the sentence."""
    from scan_viz.heads import selectable_heads
    from scan_viz.render import overview_image

    heads = st.multiselect("Compare heads", selectable_heads(), key=COMPARE_KEY,
                           persist_state="session", placeholder="pick two or more heads",
                           help="The same image and sentence under each head, side by side.")
    if not heads:
        return
    if picked.image_id is None:
        st.info("Compare ranks the image among the gallery's: pick a gallery image to compare heads.")
        return
    chosen = compare_settings(bundle, settings, heads)
    results = state.shown(lambda: state.comparison(bundle.key, picked.image_id, sentence,
                                                   tuple(s.key() for s in chosen)))
    if results is None:
        return
    st.session_state[COMPARE_MARKER] = [r.head.name for r in results]
    with st.container(key="compare"):
        for column, result, chosen_settings in zip(st.columns(len(results)), results, chosen):
            al = result.alignment
            with column:
                st.subheader(result.head.name)
                st.caption(chosen_settings.describe())
                st.markdown(f"{SCORE_LABEL} {al.score:.4f} \u00b7 **rank** {result.rank} of {result.n_images}",
                            help="The image's rank among the gallery's images for this sentence under this head "
                                 "(1 = the head's top image).")
                st.image(overview_image(picked.image, al), width="stretch",
                         caption="lit: " + (al.region_relevance_label if al.region_relevance is not None
                                            else "attention received") + "; a box per word that picks a region")
                bars = word_relevance_bars(al)
                if bars is not None:
                    st.plotly_chart(bar_figure(bars), width="stretch", key=f"cmp_words_{result.head.name}")
                bars = region_relevance_bars(al, 8, title=f"{al.region_relevance_label}, top 8 regions")
                if bars is not None:
                    st.plotly_chart(bar_figure(bars), width="stretch", key=f"cmp_regions_{result.head.name}")


def render() -> None:
    """The Explore page."""
    served = state.page_start("Explore")
    if served is None:
        return
    bundle, settings = served
    for marker in (PANELS_MARKER, COMPARE_MARKER, RANK_MARKER, VERDICT_MARKER, DOMAIN_MARKER):
        st.session_state.pop(marker, None)
    st.session_state.setdefault(SOURCE_KEY, GALLERY)
    st.segmented_control("Image", [GALLERY, UPLOAD], key=SOURCE_KEY, required=True, persist_state="session",
                         label_visibility="collapsed")
    if st.session_state[SOURCE_KEY] == GALLERY:
        picker = st.container()
        picked = picked_gallery_image(bundle)  # first: a link's unknown id is dropped, and the picker opens
        with picker:
            gallery_picker(bundle)
    else:
        picked = picked_upload(bundle)
    text_column = sentence_box(bundle, picked)
    text = st.session_state.get(Q_KEY, "").strip()
    sentence = alignment = None
    if text:
        with text_column:
            sentence = state.shown(lambda: check_sentence(text))
    if picked is None:
        if st.session_state[SOURCE_KEY] == GALLERY:  # the upload side has said what it needs, or what went wrong
            st.info("Pick a gallery image above, or upload one.")
    elif not text:
        st.info("Type a sentence, or click one of the image's captions.")
    elif sentence is not None:
        alignment = state.shown(lambda: state.alignment(bundle.key, picked.key, sentence, settings.key(),
                                                        picked.regions))
    word = None
    if picked is not None and not picked.drawable:
        st.info(drawing_note(bundle.gallery) or NO_DRAWING)
    if alignment is not None:
        word_index = resolve_word(alignment)
        word = alignment.words[word_index] if word_index != content_words(alignment)[0] else None
        with text_column:
            show_summary(alignment, picked, bundle, settings)
        if picked.drawable:
            show_views(picked, alignment, bundle, settings)
            show_compare(picked, sentence, bundle, settings)
        else:  # the per-word (or per-region) relevance needs no picture
            state.shown(lambda: show_relevance(alignment))
    write_deep_link(bundle, settings, picked, sentence, word)


if __name__ == "__main__":
    render()
