"""Learn: step through a head's computation on one image (a gallery image or the visitor's upload) and a sentence,
with the model's own numbers.

A page script. The steps are the head's own (:func:`scan_viz.heads.walk.steps`: one traced run of its scoring code);
this page only lays them out: a stepper (previous / next, contents), each step's formula, its numbers as a
heatmap whose hover substitutes that cell's numbers, the image with one word's row painting the boxes, and the
head's settings, which recompute every step while only the Learn panel reruns (a fragment). Before an attention
step shows its answer the student can predict where a word looks (a tally is kept; a toggle turns it off).

Its link: ``/learn?image=ID&q=SENTENCE&head=NAME&step=N`` (+ the head's setting keys, ``view=present``), read and
written by :mod:`scan_viz.app.params` like every other page's. An upload is the one Explore holds (the same
uploader, caps, cached decoding and detection: :func:`scan_viz.app.explore.picked_upload`); it never goes into a
link, and what needs the gallery (the best false caption by the truth check) says so in one line.
"""
from __future__ import annotations

import html
from functools import partial

import numpy as np
import pandas as pd
import streamlit as st

from scan_viz.app import state
from scan_viz.app.bundle import Bundle, drawing_note
from scan_viz.app.explore import NO_DRAWING, Picked, picked_upload
from scan_viz.app.frame import guarded
from scan_viz.app.params import STEP_MAX, ExploreParams, HeadSettings
from scan_viz.app.safe_text import literal, plain, show_error
from scan_viz.errors import ScanVizError
from scan_viz.heads import head_spec
from scan_viz.heads.stepspec import REGIONS, WORDS
from scan_viz.heads.walk import Step, Walk, has_steps
from scan_viz.limits import check_sentence
from scan_viz.render import learn

IMAGE_KEY, Q_KEY, STEP_KEY, WORD_KEY = "ln_image", "ln_q", "ln_step", "ln_word"
PREDICT_KEY, PRESENT_KEY, GUESS_KEY, TALLY_KEY = "ln_predict", "ln_present", "ln_guess", "ln_tally"
REVEALED_KEY, VERDICT_KEY, HANDOUT_KEY = "ln_revealed", "ln_verdict", "ln_handout"
TWO_KEY, OTHER_Q_KEY = "ln_two", "ln_other_q"
#: Which image the steps run on: the link's gallery image, or the visitor's upload (Explore's, or one made here).
SOURCE_KEY, GALLERY, UPLOAD = "ln_source", "Gallery image", "Your upload"
#: One line each: on an upload, what needs a gallery image; and that the link cannot carry the upload.
NEEDS_GALLERY = ("The gallery's best-scoring false caption needs a gallery image (the truth check knows only the "
                 "gallery's scenes): type a caption to set beside your upload.")
NOT_IN_LINK = ("This page's link keeps the sentence, the step and the settings, not your upload (an upload is never "
               "put in a link): whoever opens it sees a gallery image.")
#: What "two at once" puts beside the pair.
TWO_MODES = ("Nothing", "A false caption", "Another head")
#: The head set beside one that declares no contrast of its own (scan_viz.heads: CHAN's is SCAN's soft attention).
DEFAULT_CONTRAST = "chan"
#: What the panel showed last (step key, head settings, main tensor): for tests and the benchmark.
SHOWN_KEY = "ln_shown"
#: Large type, sidebar and navigation hidden: a projector's view (constant CSS, no visitor text in it).
PRESENT_CSS = """<style>
[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"] {display: none;}
.stMainBlockContainer p, .stMainBlockContainer li, .stMainBlockContainer label {font-size: 1.45rem !important;}
.stMainBlockContainer h2 {font-size: 2.6rem !important;}
.katex {font-size: 1.9em !important;}
</style>"""


#: Left / right arrow keys press Previous / Next (not while typing or on a slider, whose arrows move it). A
#: same-origin component iframe adds one listener to the page; constant script, served by the app itself.
ARROW_KEYS_JS = """<script>
const doc = window.parent.document;
if (!window.parent.__scanVizLearnKeys) {
  window.parent.__scanVizLearnKeys = true;
  doc.addEventListener("keydown", (event) => {
    const target = event.target;
    if (target && (["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName) || target.isContentEditable
                   || target.getAttribute("role") === "slider")) return;
    const label = {ArrowRight: "Next \u2192", ArrowLeft: "\u2190 Previous"}[event.key];
    if (!label) return;
    const button = [...doc.querySelectorAll("button")].find((b) => b.innerText.trim() === label);
    if (button && !button.disabled) { button.click(); event.preventDefault(); }
  });
}
</script>"""


def control_key(name: str) -> str:
    """The Learn panel's own control of a head setting (the sidebar's is ``state.setting_key``)."""
    return f"ln_{name}"


# ----------------------------------------------------------------------------- link


def apply_deep_link(params: ExploreParams) -> None:
    """Copy a new link's pair, step and view into the session (the frame has applied the head settings)."""
    if params.image is not None:
        st.session_state[IMAGE_KEY] = params.image
        st.session_state[SOURCE_KEY] = GALLERY
    if params.q is not None:
        st.session_state[Q_KEY] = params.q
    if params.step is not None:
        st.session_state[STEP_KEY] = params.step - 1
    st.session_state[PRESENT_KEY] = params.view == "present"
    st.session_state.pop(WORD_KEY, None)
    if params.word is not None:
        st.session_state["_ln_link_word"] = params.word


def write_deep_link(bundle: Bundle, settings: HeadSettings, image_id: str | None, sentence: str, step: int) -> None:
    """The view into the URL; ``image_id`` None for an upload (left out: an upload is never in a link)."""
    state.write_link({"image": image_id, "q": sentence, "step": step + 1,
                      "view": "present" if st.session_state.get(PRESENT_KEY) else None,
                      **state.link_fields(bundle, settings)})


# ----------------------------------------------------------------------------- data


@st.cache_data(show_spinner=False, max_entries=64)
def walk_of(bundle_key: tuple, image_id: str, sentence: str, head: str, settings: tuple) -> Walk:
    """The head's steps on a gallery pair (float64), cached per settings."""
    from scan_viz.heads.walk import steps
    from scan_viz.pipeline import gallery_regions

    bundle = state.bundle_by_key(bundle_key)
    return steps(bundle.model, gallery_regions(bundle.gallery, image_id), sentence, head=head, **dict(settings))


@st.cache_data(show_spinner=False, max_entries=16)
def upload_walk_of(bundle_key: tuple, image_key: str, sentence: str, head: str, settings: tuple,
                   _regions) -> Walk:
    """The head's steps on an upload's detected regions (``image_key``: ``upload:SHA``), cached per settings."""
    from scan_viz.heads.walk import steps

    return steps(state.bundle_by_key(bundle_key).model, _regions, sentence, head=head, **dict(settings))


def panel_walk(bundle: Bundle, picked: Picked, sentence: str, settings: HeadSettings) -> Walk:
    if picked.image_id is not None:
        return walk_of(bundle.key, picked.image_id, sentence, settings.head, settings.values)
    return upload_walk_of(bundle.key, picked.key, sentence, settings.head, settings.values, picked.regions)


# ----------------------------------------------------------------------------- controls


def _copy_to_sidebar(name: str) -> None:
    """A Learn control moved: the sidebar's control of the same setting follows (so the link and every other
    page agree), without rerunning the whole page."""
    st.session_state[state.setting_key(name)] = st.session_state[control_key(name)]


def learn_controls(bundle: Bundle, settings: HeadSettings) -> HeadSettings:
    """The head's settings as controls on the page (from its declarations); the values they hold."""
    params = head_spec(settings.head).params
    if not params:
        return settings
    columns = st.columns(len(params))
    values = {}
    for column, param in zip(columns, params):
        key = control_key(param.name)
        with column:
            if param.choices is not None:
                st.selectbox(param.display, list(param.choices), key=key, help=param.help,
                             on_change=_copy_to_sidebar, args=(param.name,))
            else:
                st.slider(param.display, float(param.low), float(param.high), step=float(param.step), key=key,
                          help=param.help, on_change=_copy_to_sidebar, args=(param.name,))
        values[param.name] = st.session_state[key]
    return HeadSettings.for_head(settings.head, bundle.model.config, values)


def sync_controls(settings: HeadSettings) -> None:
    """On a full run the sidebar (and a link) are the truth: the Learn controls start from them."""
    for name, value in settings.values:
        st.session_state[control_key(name)] = value


def _move(delta: int, count: int) -> None:
    st.session_state[STEP_KEY] = int(min(max(st.session_state.get(STEP_KEY, 0) + delta, 0), count - 1))


def _jump(count: int) -> None:
    st.session_state[STEP_KEY] = int(min(max(st.session_state["ln_toc"], 0), count - 1))


# ----------------------------------------------------------------------------- predict, then reveal


def asks(step: Step) -> bool:
    """Whether a step is one where a word chooses among the regions (its answer can be predicted)."""
    return step.axes == (WORDS, REGIONS) and step.spec.cell in ("softmax", "argmax") and step.spec.over == REGIONS


def _guess(reveal_id: tuple, answer: int, labels: list[str]) -> None:
    choice = st.session_state.get(GUESS_KEY)
    if choice is None:
        return
    tally = st.session_state.setdefault(TALLY_KEY, {"right": 0, "wrong": 0})
    guessed = labels.index(choice)
    right = guessed == answer
    tally["right" if right else "wrong"] += 1
    st.session_state.setdefault(REVEALED_KEY, set()).add(reveal_id)
    st.session_state[VERDICT_KEY] = (right, labels[guessed], labels[answer])
    st.session_state[GUESS_KEY] = None


def _reveal(reveal_id: tuple) -> None:
    st.session_state.setdefault(REVEALED_KEY, set()).add(reveal_id)
    st.session_state[VERDICT_KEY] = None


def prediction(walk: Walk, step: Step, word: int, reveal_id: tuple) -> bool:
    """Ask before showing; True once the step's answer may be shown."""
    if not st.session_state.get(PREDICT_KEY, True) or not asks(step):
        return True
    if reveal_id in st.session_state.get(REVEALED_KEY, set()):
        verdict = st.session_state.get(VERDICT_KEY)
        if verdict is not None:
            right, guessed, answer = verdict
            (st.success if right else st.warning)(
                f"{'Right' if right else 'Not quite'}: you picked {literal(guessed)}, the largest weight is on "
                f"{literal(answer)}.")
        return True
    labels = [f"{i}: {plain(label)}" for i, label in enumerate(walk.region_labels)]
    answer = int(np.argmax(step.value[word]))
    st.info(f"Predict first: which region will {literal(walk.words[word])} put the most weight on? Click it.")
    st.pills("Your guess", labels, key=GUESS_KEY, on_change=_guess, args=(reveal_id, answer, labels))
    st.button("Skip: show the answer", on_click=_reveal, args=(reveal_id,))
    return False


def show_tally() -> None:
    tally = st.session_state.get(TALLY_KEY, {"right": 0, "wrong": 0})
    st.caption(f"Predictions this session: {tally['right']} right, {tally['wrong']} wrong")


# ----------------------------------------------------------------------------- the panel


def _word_choice(walk: Walk) -> int:
    words = [f"{i}: {plain(w)}" for i, w in enumerate(walk.words)]
    linked = st.session_state.pop("_ln_link_word", None)
    if linked is not None:
        match = next((i for i, w in enumerate(walk.words) if w == linked), None)
        if match is not None:
            st.session_state[WORD_KEY] = words[match]
    if st.session_state.get(WORD_KEY) not in words:
        st.session_state[WORD_KEY] = words[1 if len(words) > 2 else 0]
    choice = st.pills("Word (paints its row on the image)", words, key=WORD_KEY)
    return words.index(choice) if choice in words else 1


@st.cache_data(show_spinner=False, max_entries=8)
def thumbnails(image: np.ndarray, boxes: np.ndarray | None) -> list[str]:
    """The regions' thumbnails, encoded once per image and boxes."""
    return learn.region_thumbnails(image, boxes)


def _pick_cell(key: str, words: list[str]) -> None:
    """A heatmap cell clicked: its word (the point's y, "i: word") becomes the chosen word, as a word click."""
    chart = st.session_state.get(key)
    points = (chart or {}).get("selection", {}).get("points", [])
    if not points:
        return
    row = str(points[0].get("y", "")).split(":", 1)[0]
    if row.isdigit() and int(row) < len(words):
        st.session_state[WORD_KEY] = words[int(row)]


def show_numbers(walk: Walk, step: Step, thumbs: list[str] | None = None) -> None:
    """Every tensor of the step: heatmap / bars, and the exact numbers in a table; a words x ... heatmap's
    cell click chooses its word."""
    words = [f"{i}: {plain(w)}" for i, w in enumerate(walk.words)]
    for name, axes in step.spec.tensors:
        value = step.tensors[name]
        if value.ndim == 0:
            st.metric(name, f"{float(value):.6f}")
            continue
        clickable = value.ndim == 2 and axes[0] == WORDS
        figure = learn.step_figure(walk, step, name, large=bool(st.session_state.get(PRESENT_KEY)),
                                   thumbnails=thumbs, clickable=clickable)
        key = f"ln_fig_{name}"
        if clickable:
            st.plotly_chart(figure, key=key, config={"displaylogo": False}, on_select=partial(_pick_cell, key, words),
                            selection_mode=("points",))
        else:
            st.plotly_chart(figure, key=key, config={"displaylogo": False})
        with st.expander(f"{name}: the numbers"):
            st.dataframe(_frame(walk, value, axes))


def _frame(walk: Walk, value: np.ndarray, axes: tuple[str, ...]) -> pd.DataFrame:
    def names(axis: str, count: int) -> list[str]:
        given = walk.words if axis == WORDS else walk.region_labels if axis == REGIONS else None
        return [f"{i}: {plain(given[i])}" if given else str(i) for i in range(count)]

    if value.ndim == 1:
        return pd.DataFrame({"value": value}, index=names(axes[0], len(value)))
    return pd.DataFrame(value, index=names(axes[0], value.shape[0]), columns=names(axes[1], value.shape[1]))


def show_vectors(walk: Walk) -> None:
    with st.expander("The embeddings this step starts from (norm and largest dimensions, never whole)"):
        from scan_viz.heads.walk import vector_summary

        lines = [f"word {plain(w)}: {vector_summary(e)}" for w, e in zip(walk.words, walk.words_emb)]
        lines += [f"region {plain(r)}: {vector_summary(v)}" for r, v in zip(walk.region_labels, walk.regions)]
        st.text("\n".join(lines))


def prose(text: str) -> str:
    """A step's own sentence (the project's text, never a visitor's) as Markdown: λ_2 and [s]_+ stay literal."""
    return text.replace("\\", "\\\\").replace("_", "\\_").replace("*", "\\*")


def show_step(bundle: Bundle, walk: Walk, index: int, picked: Picked, sentence: str) -> None:
    step = walk.steps[index]
    st.subheader(f"{index + 1}. {step.title}")
    st.latex(step.spec.latex)
    st.write(prose(step.spec.meaning))
    if step.spec.note:
        st.caption(f"Official code: {prose(step.spec.note)}")
    word = _word_choice(walk)
    reveal_id = (picked.key, sentence, walk.head, tuple(sorted(walk.settings.items())), step.key, word)
    shown = prediction(walk, step, word, reveal_id)
    if shown:
        if step.value.ndim == 2 and step.axes[0] == WORDS:
            peak = int(np.argmax(step.value[word]))
            st.text("With the code's numbers: " + plain(html.unescape(
                learn.cell_formula(walk, step, word, peak).replace("<br>", " "))))
        elif step.value.ndim == 0:
            st.text(f"With the code's numbers: {step.name} = {float(step.value):.6f}")
    left, right = st.columns([3, 2])
    with right:
        if picked.drawable:
            weights = learn.row_weights(walk, step, word) if shown else np.zeros(len(walk.region_labels))
            st.plotly_chart(learn.boxes_figure(picked.image, walk, weights,
                                               f"{walk.words[word]}: box opacity = weight"),
                            key="ln_boxes", config={"displaylogo": False})
        else:
            st.info((drawing_note(bundle.gallery) if picked.image_id is not None else None) or NO_DRAWING)
    with left:
        if shown:
            show_numbers(walk, step, thumbnails(picked.image, walk.boxes) if picked.drawable else [])
        else:
            st.caption("The numbers appear once you have predicted (or skipped).")
    st.session_state[SHOWN_KEY] = {"step": step.key, "settings": dict(walk.settings), "shown": shown,
                                   "value": step.value if shown else None, "word": word}


@st.cache_data(show_spinner=False, max_entries=32)
def false_caption(bundle_key: tuple, image_id: str, head: str, settings: tuple) -> tuple[str, float] | None:
    bundle = state.bundle_by_key(bundle_key)
    return learn.best_false_caption(bundle.index, image_id, bundle.model.head(head, **dict(settings)))


def compact_step(walk: Walk, index: int, word: int, key: str, caption: str) -> None:
    """One step of a second walk, beside the first: its title, the sentence, the main numbers, the shares."""
    step = walk.steps[min(index, len(walk.steps) - 1)]
    st.markdown(f"**{plain(walk.head_title)}** \u00b7 score {walk.score:.4f}")
    st.text(plain(caption))
    st.caption(f"{min(index, len(walk.steps) - 1) + 1}. {step.title}")
    if step.value.ndim == 0:
        st.metric(step.name, f"{float(step.value):.6f}")
    else:
        st.plotly_chart(learn.step_figure(walk, step), key=f"ln_two_{key}", config={"displaylogo": False})
    found = learn.word_shares(walk)
    if found is not None:
        st.caption(f"Each {found[0][:-1]}'s share of the score")
        st.dataframe(_frame(walk, found[1], (found[0],)), key=f"ln_two_shares_{key}")


def two_at_once(bundle: Bundle, walk: Walk, settings: HeadSettings, picked: Picked, sentence: str) -> None:
    """The pair beside a false caption (the gallery's best-scoring one by the truth check, or a typed one), or
    beside another head on the same sentence, at the same step. On an upload only a typed caption: the truth
    check needs a gallery image (one line says so)."""
    mode = st.radio("Two at once", TWO_MODES, key=TWO_KEY, horizontal=True)
    if mode == TWO_MODES[0]:
        return
    index = st.session_state.get(STEP_KEY, 0)
    word = st.session_state.get(SHOWN_KEY, {}).get("word", 1)
    if mode == TWO_MODES[1]:
        if picked.image_id is None:
            st.info(NEEDS_GALLERY)
            found = None
        else:
            found = false_caption(bundle.key, picked.image_id, settings.head, settings.values)
        typed = st.text_input("Or type a caption to set beside it", key=OTHER_Q_KEY,
                              on_change=state.drop_bidi, args=(OTHER_Q_KEY,)).strip()
        other = typed or (found[0] if found else None)
        if other is None:
            if picked.image_id is not None:
                st.info("No false caption found among the best-scoring ones: type one.")
            return
        try:
            other = check_sentence(other)
        except ScanVizError as exc:
            show_error(exc)
            return
        other_walk = state.shown(lambda: panel_walk(bundle, picked, other, settings))
        label = "typed" if typed else "the gallery's best-scoring false caption"
    else:
        head = head_spec(settings.head).contrast or DEFAULT_CONTRAST
        other_settings = HeadSettings.for_head(head, bundle.model.config)
        other, label = sentence, f"the same sentence under {head}"
        other_walk = state.shown(lambda: panel_walk(bundle, picked, sentence, other_settings))
    if other_walk is None:
        return
    left, right = st.columns(2)
    with left:
        compact_step(walk, index, word, "a", sentence)
    with right:
        st.caption(label)
        compact_step(other_walk, index, word, "b", other)
    st.session_state["ln_two_scores"] = (walk.score, other_walk.score)


def shares(walk: Walk) -> None:
    found = learn.word_shares(walk)
    if found is None:
        return
    axis, values = found
    with st.expander(f"Each {axis[:-1]}'s share of the score"):
        st.dataframe(_frame(walk, values, (axis,)))


def handout(walk: Walk, picked: Picked, sentence: str) -> None:
    """A button that builds the pair's handout, then its download (only for the pair and settings it was built
    for: a handout of another view is never offered)."""
    image = picked.image if picked.drawable else None
    built_for = (picked.key, sentence, walk.head, tuple(sorted(walk.settings.items())))
    if st.button("Build a handout (one HTML file, works offline)"):
        with st.spinner("Typesetting the formulas..."):
            page = learn.handout_html(walk, image, sentence, f"{walk.head_title} step by step")
        st.session_state[HANDOUT_KEY] = (built_for, page)
    kept = st.session_state.get(HANDOUT_KEY)
    if kept is not None and kept[0] == built_for:
        st.download_button("Download the handout", kept[1], file_name="scan-steps.html", mime="text/html")


@st.fragment
@guarded("Learn")
def learn_panel(bundle: Bundle, settings: HeadSettings, picked: Picked, sentence: str) -> None:
    """Everything that depends on the head's settings: reruns alone when a Learn control moves."""
    present = bool(st.session_state.get(PRESENT_KEY))
    if not present:
        settings = learn_controls(bundle, settings)
    walk = state.shown(lambda: panel_walk(bundle, picked, sentence, settings))
    if walk is None:
        return
    count = len(walk.steps)
    index = int(min(max(st.session_state.get(STEP_KEY, 0), 0), count - 1))
    st.session_state[STEP_KEY] = index
    nav = st.columns([1, 1, 4])
    nav[0].button("\u2190 Previous", on_click=_move, args=(-1, count), disabled=index == 0, key="ln_prev")
    nav[1].button("Next \u2192", on_click=_move, args=(1, count), disabled=index == count - 1, key="ln_next")
    nav[2].caption(f"Step {index + 1} of {count} \u00b7 {plain(walk.head_title)} \u00b7 score {walk.score:.4f}")
    if present:
        show_step(bundle, walk, index, picked, sentence)
    else:
        toc, body = st.columns([1, 4])
        with toc:
            st.session_state["ln_toc"] = index
            st.radio("Contents", list(range(count)), key="ln_toc", format_func=lambda i: walk.steps[i].title,
                     on_change=_jump, args=(count,))
            show_tally()
        with body:
            show_step(bundle, walk, index, picked, sentence)
            show_vectors(walk)
            shares(walk)
            two_at_once(bundle, walk, settings, picked, sentence)
            handout(walk, picked, sentence)
    write_deep_link(bundle, settings, picked.image_id, sentence, index)


def gallery_pick(bundle: Bundle, column) -> Picked | None:
    """The link's (or the chosen) gallery image with its stored regions."""
    gallery = bundle.gallery
    if st.session_state.get(IMAGE_KEY) not in gallery.ids:
        st.session_state[IMAGE_KEY] = gallery.ids[0]
    image_id = column.selectbox("Gallery image", gallery.ids, key=IMAGE_KEY)
    if not st.session_state.get(Q_KEY):
        captions = gallery.captions_of(image_id)
        st.session_state[Q_KEY] = captions[0] if captions else ""
    from scan_viz.pipeline import gallery_regions

    try:
        regions = gallery_regions(gallery, image_id)
    except ScanVizError as exc:
        show_error(exc)
        return None
    image = state.gallery_image(bundle.key, image_id) if gallery.has_image(image_id) else None
    return Picked(f"gallery:{image_id}", image, regions, image_id, image_id)


def upload_pick(bundle: Bundle, column) -> Picked | None:
    """The visitor's upload: the one Explore holds, or one made here (Explore's uploader, caps and caches)."""
    with column:
        picked = picked_upload(bundle)
        if picked is not None:
            st.caption(f"Your upload: {literal(picked.title)}")
    return picked


def pick_pair(bundle: Bundle) -> tuple[Picked, str] | None:
    st.session_state.setdefault(SOURCE_KEY, GALLERY)
    st.segmented_control("Image", [GALLERY, UPLOAD], key=SOURCE_KEY, required=True, persist_state="session")
    left, right = st.columns([1, 3])
    picked = gallery_pick(bundle, left) if st.session_state[SOURCE_KEY] == GALLERY else upload_pick(bundle, left)
    text = right.text_input("Sentence", key=Q_KEY, on_change=state.drop_bidi, args=(Q_KEY,)).strip()
    if picked is None:
        return None
    if picked.image_id is None:
        st.caption(NOT_IN_LINK)
    if not text:
        st.info("Type a sentence.")
        return None
    try:
        return picked, check_sentence(text)
    except ScanVizError as exc:
        show_error(exc)
        return None


def render() -> None:
    started = state.page_start("Learn")
    if started is None:
        return
    bundle, settings = started
    try:
        head = bundle.model.head(settings.head, **settings.overrides())
    except ScanVizError as exc:
        st.error(literal(str(exc)))
        return
    if not has_steps(head):
        st.warning(f"The {literal(settings.head)} head does not describe its steps yet: pick another head "
                   "in the sidebar.")
        return
    st.session_state.setdefault(PREDICT_KEY, True)
    st.session_state.setdefault(PRESENT_KEY, False)
    if st.session_state[PRESENT_KEY]:
        st.html(PRESENT_CSS)
    st.iframe(ARROW_KEYS_JS, height=1)  # constant script: the page's own, never a visitor's
    options = st.columns(3)
    options[0].toggle("Ask me to predict first", key=PREDICT_KEY)
    options[1].toggle("Presentation mode", key=PRESENT_KEY)
    pair = pick_pair(bundle)
    if pair is None:
        return
    sync_controls(settings)
    st.session_state[STEP_KEY] = int(min(max(st.session_state.get(STEP_KEY, 0), 0), STEP_MAX - 1))
    learn_panel(bundle, settings, *pair)


if __name__ == "__main__":
    render()
