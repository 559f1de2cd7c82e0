"""Tests for scan_viz.render: attention maps against a plain loop, and what each figure shows."""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from matplotlib.figure import Figure

from scan_viz import render
from scan_viz.errors import ScanVizError
from scan_viz.render import attention_map, panel_image
from scan_viz.types import Alignment

WORDS = ["<start>", "a", "zebra", "on", "red", "grass", "<end>"]
BOXES = np.array([[4, 4, 24, 20], [30, 10, 60, 40], [0, 30, 16, 48], [40, 0, 64, 8]], dtype=np.float32)
LABELS = ["sky", "zebra", "grass", "tree"]
SIZE = (64, 48)  # (width, height)


def make_alignment(direction: str = "t2i", n_regions: int = 4, words: list[str] | None = None,
                   boxes: np.ndarray | None = BOXES, seed: int = 0) -> Alignment:
    """A hand-made alignment: word i attends mostly to region (i % n_regions)."""
    words = list(words or WORDS)
    rng = np.random.default_rng(seed)
    t2i = rng.random((len(words), n_regions)) * 0.2
    t2i[np.arange(len(words)), np.arange(len(words)) % n_regions] += 1.0
    t2i /= t2i.sum(axis=1, keepdims=True)
    # word x region either way; i2t: each region's distribution over the words (columns sum to 1), R per region
    attention = t2i if direction == "t2i" else t2i / t2i.sum(axis=0)
    relevance = {f"{'word' if direction == 't2i' else 'region'}_relevance":
                 np.linspace(0.9, 0.1, len(words) if direction == "t2i" else n_regions)}
    labels = {f"{'word' if direction == 't2i' else 'region'}_relevance_label": "R"}
    return Alignment(
        text=" ".join(w for w in words if not w.startswith("<")), words=words,
        spans=[None] * len(words), unknown=[w == "zebra" for w in words], attention=attention,
        score=0.42, head=f"scan_{direction}", **relevance, **labels,
        attention_label="word\u2192region attention" if direction == "t2i" else "region\u2192word attention",
        boxes=boxes, region_labels=LABELS[:n_regions] if n_regions <= len(LABELS) else None, image_size=SIZE)


@pytest.fixture
def image() -> np.ndarray:
    return np.full((SIZE[1], SIZE[0], 3), 128, np.uint8)


def reference_map(boxes: np.ndarray, weights: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The plain per-box loop attention_map must match."""
    width, height = size
    painted = np.zeros((height, width))
    for (x1, y1, x2, y2), weight in zip(boxes, weights):
        painted[max(int(np.floor(y1)), 0):max(int(np.ceil(y2)), 0), max(int(np.floor(x1)), 0):max(int(np.ceil(x2)), 0)] += weight
    return painted / painted.max() if painted.max() > 0 else painted


# ----------------------------------------------------------------- attention_map and panel_image


def test_attention_map_sums_overlaps_and_normalises():
    boxes = np.array([[0, 0, 6, 6], [4, 4, 10, 10]], float)
    lit = attention_map(boxes, np.array([1.0, 2.0]), (12, 10))
    assert lit.shape == (10, 12) and lit.dtype == np.float32
    assert lit[5, 5] == pytest.approx(1.0)  # overlap: (1 + 2) / 3
    assert lit[1, 1] == pytest.approx(1 / 3) and lit[8, 8] == pytest.approx(2 / 3)
    assert lit[0, 11] == 0 and lit[9, 0] == 0 and lit.min() >= 0 and lit.max() <= 1


def test_attention_map_zero_weights_and_no_boxes():
    assert not attention_map(BOXES, np.zeros(4), SIZE).any()
    assert not attention_map(np.zeros((0, 4)), np.zeros(0), SIZE).any()


def test_attention_map_clips_boxes_outside_the_image():
    boxes = np.array([[-5, -5, 3, 3], [8, 8, 50, 50], [100, 100, 120, 130]], float)
    lit = attention_map(boxes, np.array([1.0, 1.0, 5.0]), (10, 10))
    assert lit[:3, :3].min() == 1 and lit[8:, 8:].min() == 1
    assert lit[3:8, :].max() == 0  # the third box lies wholly outside and paints nothing


def test_attention_map_matches_a_plain_loop():
    rng = np.random.default_rng(3)
    corners = rng.uniform(-10, 70, (20, 2, 2))
    boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
    weights = rng.random(20)
    np.testing.assert_allclose(attention_map(boxes, weights, SIZE), reference_map(boxes, weights, SIZE), atol=1e-6)


def test_attention_map_rejects_mismatched_inputs():
    with pytest.raises(ScanVizError, match="weights"):
        attention_map(BOXES, np.ones(3), SIZE)


def test_panel_image_is_bright_only_in_the_attended_box(image):
    shaded = panel_image(image, np.array([0.0, 1.0, 0.0, 0.0]), BOXES)
    x1, y1, x2, y2 = BOXES[1].astype(int)
    assert (shaded[y1:y2, x1:x2] == 128).all()
    outside = np.ones(shaded.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    assert shaded[outside].max() == round(128 * render.DIM_FLOOR)


# ----------------------------------------------------------------- word panels


def test_word_panels_one_axes_per_user_word(image):
    alignment = make_alignment()
    assert len(render.word_panels(image, alignment).axes) == 5  # <start>, <end> left out
    assert len(render.word_panels(image, alignment, show_specials=True).axes) == 7
    assert len(render.word_panels(image, alignment, words=[2, 4]).axes) == 2


def test_word_panels_show_the_attended_box_brightest(image):
    alignment = make_alignment()
    figure = render.word_panels(image, alignment, words=[1, 2])
    for axes, word in zip(figure.axes, [1, 2]):
        top = int(np.argmax(alignment.attention[word]))
        shown = np.asarray(axes.images[0].get_array())
        np.testing.assert_array_equal(shown, panel_image(image, alignment.attention[word], BOXES))
        x1, y1, x2, y2 = BOXES[top].astype(int)
        inside, outside = shown[y1:y2, x1:x2].mean(), shown[SIZE[1] - 2:, SIZE[0] // 2 - 4:SIZE[0] // 2].mean()
        assert inside > 2 * outside
        outline = axes.patches[0]
        assert outline.get_xy() == pytest.approx((x1, y1)) and outline.get_width() == pytest.approx(x2 - x1)
        assert LABELS[top] in axes.texts[0].get_text()


def test_word_panels_titles_mark_unknown_words_and_relevance(image):
    figure = render.word_panels(image, make_alignment())
    titles = [axes.get_title() for axes in figure.axes]
    assert titles[1].startswith("zebra (<unk>)") and "R = " in titles[1]
    assert titles[0].startswith("a\n")


def test_word_panels_i2t_and_resized_image(image):
    alignment = make_alignment("i2t")
    figure = render.word_panels(image, alignment)
    assert len(figure.axes) == 5 and all("region\u2192word" in axes.get_title() for axes in figure.axes)
    half = image[::2, ::2].copy()  # displayed at half size: boxes follow
    outline = render.word_panels(half, make_alignment(), words=[2]).axes[0].patches[0]
    assert outline.get_xy() == pytest.approx(tuple(BOXES[2, :2] / 2))
    assert render.figure_to_png(figure).startswith(b"\x89PNG")


def test_word_panels_user_errors(image):
    with pytest.raises(ScanVizError, match="no region boxes"):
        render.word_panels(image, make_alignment(boxes=None))
    with pytest.raises(ScanVizError, match="out of range"):
        render.word_panels(image, make_alignment(), words=[99])
    with pytest.raises(ScanVizError, match="uint8"):
        render.word_panels(image.astype(np.float32), make_alignment())


# ----------------------------------------------------------------- region view, bars, export


def test_region_word_figure_crops_and_shaded_words(image):
    alignment = make_alignment("i2t")
    figure = render.region_word_figure(image, alignment, top=3)
    assert len(figure.axes) == 7  # a crop and a sentence per region, and the colour bar
    assert figure.axes[0].get_title(loc="left").startswith("0: sky")  # the most relevant region first
    words = [text.get_text() for text in figure.axes[1].texts]
    assert "zebra (<unk>)" in words and "red" in words and "<start>" not in words
    one = render.region_word_figure(image, make_alignment(), regions=[1])
    assert len(one.axes) == 3 and one.axes[0].images[0].get_array().shape[:2] == (30, 30)
    assert render.figure_to_png(one).startswith(b"\x89PNG")


def test_relevance_bars_show_the_heads_numbers_over_the_sentences_own_words():
    t2i, i2t = make_alignment(), make_alignment("i2t")
    words = render.word_relevance_bars(t2i)
    # <start>/<end> left out; each bar is labelled by its index in alignment.words, the value is R unrounded
    assert words.labels == ["1: a", "2: zebra", "3: on", "4: red", "5: grass"]
    assert words.values == pytest.approx(np.linspace(0.9, 0.1, 7)[1:6], abs=1e-15)
    assert (words.title, words.axis) == ("R per word", "R")
    assert render.word_relevance_bars(i2t) is None and render.region_relevance_bars(t2i, 3) is None
    # regions: strongest first, capped at ``top``, labelled by the detector's label
    regions = render.region_relevance_bars(i2t, 3)
    assert regions.labels == ["0: sky", "1: zebra", "2: grass"] and regions.values == pytest.approx([0.9, 0.6333, 0.3667],
                                                                                                     abs=1e-4)
    assert regions.title == "R per region, top 3 regions"
    assert render.region_relevance_bars(i2t, 3, title="R, top 3").title == "R, top 3"


def test_ablation_bars_keep_word_order_and_sort_regions_by_the_size_of_the_change():
    alignment = make_alignment(words=["<start>", "a", "zebra", "<end>"])
    ablation = {"score": 0.4, "words": [("a", 0.01), ("zebra", -0.2)],
                "regions": [(0, 0.05), (1, -0.3), (2, 0.0), (3, 0.1)]}
    words, regions = render.ablation_bars(alignment, ablation, top=3)
    assert words.labels == ["1: a", "2: zebra"] and words.values == [0.01, -0.2]
    assert words.colours == [render.GAIN, render.DROP]  # a gain green, a drop red
    assert regions.labels == ["1: zebra", "3: tree", "0: sky"] and regions.values == [-0.3, 0.1, 0.05]
    assert regions.title == "remove a region (3 largest changes)" and regions.axis == "\u0394 score"
    unlabelled = render.ablation_bars(dataclasses.replace(alignment, region_labels=None), ablation, top=1)[1]
    assert unlabelled.labels == ["1: region 1"]  # the name every other view gives an unlabelled region


def test_plotly_bars_draw_the_bars_in_reading_order_with_labels_as_text():
    bars = render.Bars(["1: <b>a</b>", "2: zebra"], [0.25, -0.5], "remove a word", "\u0394 score", signed=True)
    [trace] = render.plotly_bars(bars).data
    assert list(trace.y) == ["1: &lt;b&gt;a&lt;/b&gt;", "2: zebra"]  # plotly would render <b>: escaped
    assert list(trace.x) == [0.25, -0.5] and list(trace.marker.color) == ["#2ca02c", "#d62728"]
    figure = render.plotly_bars(bars)
    assert figure.layout.yaxis.autorange == "reversed" and figure.layout.title.text == "remove a word"
    assert list(render.plotly_bars(dataclasses.replace(bars, signed=False)).data[0].marker.color) == ["#1f77b4"] * 2


def test_png_and_svg_export(image):
    figure = render.word_panels(image, make_alignment())
    assert render.figure_to_png(figure, dpi=50).startswith(b"\x89PNG\r\n\x1a\n")
    root = ET.fromstring(render.figure_to_svg(figure))
    assert root.tag.endswith("svg")
    with pytest.raises(ScanVizError, match="matplotlib"):
        render.figure_to_png(object())  # type: ignore[arg-type]


def test_labels_are_the_same_in_every_view(image):
    alignment = make_alignment(words=["<start>", "a", "zebra", "a", "<end>"])
    assert render.content_words(alignment) == [1, 2, 3]
    assert [render.word_label(alignment, i) for i in (1, 2)] == ["a", "zebra (<unk>)"]
    assert [render.word_label(alignment, i, numbered=True) for i in (1, 2, 3)] == ["a (1)", "zebra (<unk>)", "a (3)"]
    assert render.region_label(alignment, 2) == "grass"
    assert render.region_label(dataclasses.replace(alignment, region_labels=None), 2) == "region 2"
    # the matplotlib panel titles (downloads, CLI) and the app's panel captions name a word the same way
    titles = [axes.get_title() for axes in render.word_panels(image, alignment).axes]
    captions = [panel.caption for panel in render.word_panel_images(image, alignment)]
    assert titles[1] == "zebra (<unk>)\nR = 0.50" and captions[1].startswith("zebra (<unk>) \u00b7 R = 0.50 \u00b7 ")
    # word, relevance (linspace(0.9, 0.1, 5)[1]), strongest region (word 1 -> region 1) and its weight
    assert captions[0] == f"a \u00b7 R = 0.70 \u00b7 zebra {alignment.attention[1, 1]:.2f}"


def test_boxes_are_scaled_from_the_picture_the_regions_were_found_in():
    alignment = make_alignment()  # boxes in a 64 x 48 picture
    half = np.zeros((24, 32, 3), np.uint8)
    np.testing.assert_allclose(render.display_boxes(alignment, half), BOXES / 2)
    unsized = dataclasses.replace(alignment, image_size=None)
    np.testing.assert_allclose(render.display_boxes(unsized, half), BOXES)  # already in the drawn picture's pixels
    original = np.zeros((96, 128, 3), np.uint8)  # or in the pixels of the original the drawn one was resized from
    np.testing.assert_allclose(render.display_boxes(unsized, half, original), BOXES / 4)
    with pytest.raises(ScanVizError, match="no region boxes"):
        render.display_boxes(dataclasses.replace(alignment, boxes=None), half)


def test_draw_boxes_returns_a_new_array(image):
    drawn = render.draw_boxes(image, BOXES, LABELS)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert (image == 128).all()  # the input is untouched
    assert tuple(drawn[30, 45 - 15]) != (128, 128, 128)  # left edge of box 1
    with pytest.raises(ScanVizError):
        render.draw_boxes(image, BOXES, LABELS[:2])


# ----------------------------------------------------------------- plotly


def test_plotly_alignment_regions_hover_and_dropdown(image):
    alignment = make_alignment()
    figure = render.plotly_alignment(image, alignment)
    regions = [trace for trace in figure.data if trace.type == "scatter" and trace.name != render.COLOUR_BAR]
    assert figure.data[0].type == "image" and len(regions) == len(BOXES)
    for trace in regions:
        for word in WORDS:
            assert word.replace("<", "&lt;").replace(">", "&gt;") + " " in trace.text
    buttons = figure.layout.updatemenus[0].buttons
    assert [button.label for button in buttons] == ["a", "zebra", "on", "red", "grass"]
    # picking "zebra" (word 2, mostly on region 2) makes region 2's box the most opaque
    fills = buttons[1].args[0]["fillcolor"]
    opacities = [float(fill.rsplit(",", 1)[1].rstrip(")")) for fill in fills]
    assert int(np.argmax(opacities)) == 2 and len(fills) == len(BOXES)
    assert list(buttons[1].args[2]) == list(range(1, len(BOXES) + 1))
    json.loads(figure.to_json())


def test_plotly_alignment_i2t_chosen_word_and_size():
    rng = np.random.default_rng(0)
    words = ["<start>"] + [f"w{i}" for i in range(18)] + ["<end>"]
    corners = rng.uniform(0, 64, (36, 2, 2))
    boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
    alignment = make_alignment("i2t", n_regions=36, words=words, boxes=boxes)
    gradient = np.linspace(0, 255, SIZE[0] * SIZE[1] * 3).astype(np.uint8).reshape(SIZE[1], SIZE[0], 3)
    figure = render.plotly_alignment(gradient, alignment, word=5)
    assert len(figure.data) == 38 and len(figure.layout.updatemenus[0].buttons) == 18  # image, 36 boxes, colour bar
    assert figure.layout.updatemenus[0].active == 4 and "w4" in figure.layout.title.text
    assert len(figure.to_json()) < 200_000
    with pytest.raises(ScanVizError, match="out of range"):
        render.plotly_alignment(gradient, alignment, word=40)


def test_plotly_figure_cannot_go_through_matplotlib_export(image):
    figure = render.plotly_alignment(image, make_alignment())
    with pytest.raises(ScanVizError, match="interactive view"):
        render.figure_to_svg(figure)
    assert isinstance(render.word_panels(image, make_alignment(), words=[1]), Figure)


# ----------------------------------------------------------------- flat attention and one colour scale

N36 = 36
GRID = np.array([[8 * (k % 6), 8 * (k // 6), 8 * (k % 6) + 8, 8 * (k // 6) + 8] for k in range(N36)], np.float32)


def alignment_36(rows: dict[str, np.ndarray], direction: str = "t2i") -> Alignment:
    """An alignment over 36 non-overlapping 8x8 boxes (a 6x6 grid on a 48x48 image), words given as t2i rows."""
    words = ["<start>", *rows, "<end>"]
    t2i = np.full((len(words), N36), 1 / N36)
    for i, row in enumerate(rows.values(), 1):
        t2i[i] = row
    relevance = ({"word_relevance": np.linspace(0.5, 0.1, len(words)), "word_relevance_label": "R"}
                 if direction == "t2i" else {"region_relevance": np.linspace(0.5, 0.1, N36),
                                             "region_relevance_label": "R"})
    return Alignment(text=" ".join(rows), words=words, spans=[None] * len(words), unknown=[False] * len(words),
                     attention=t2i, score=0.3, head=f"scan_{direction}", **relevance, boxes=GRID,
                     region_labels=[f"r{k}" for k in range(N36)], image_size=(48, 48))


def peaked(region: int, weight: float) -> np.ndarray:
    """A distribution over 36 regions with ``weight`` on ``region`` and the rest spread evenly."""
    row = np.full(N36, (1 - weight) / (N36 - 1))
    row[region] = weight
    return row


def test_attention_peak_flat_rule_and_its_message():
    uniform = render.attention_peak(np.full(N36, 1 / N36))
    assert uniform.flat and uniform.describe() == "flat: no region stands out (max 0.03, uniform 0.028)"
    # the function words (0.06-0.08 of 36 regions) are flat; just over 3x uniform (3/36 = 0.0833) is not
    for weight in (0.06, 0.08, 0.083):
        assert render.attention_peak(peaked(7, weight)).flat
    sharp = render.attention_peak(peaked(7, 0.084))
    assert not sharp.flat and sharp.region == 7 and sharp.share == pytest.approx(0.084)
    assert not render.attention_peak(peaked(3, 0.9)).flat
    # judged by shares: an i2t column (region -> word weights, not summing to 1) scaled down is as flat as before
    assert render.attention_peak(0.1 * peaked(7, 0.08)).flat and not render.attention_peak(0.1 * peaked(7, 0.5)).flat
    # few regions: the bound is capped halfway between uniform and one region (2 regions: 0.75)
    assert render.attention_peak(np.array([0.7, 0.3])).flat and not render.attention_peak(np.array([0.8, 0.2])).flat
    assert not render.attention_peak(np.array([1.0])).flat
    assert render.attention_peak(np.zeros(5)).flat and render.attention_peak(np.array([np.nan, 0.0])).flat


def _yellow(pixels: np.ndarray) -> int:
    """How many pixels are the outline's yellow (255, 204, 0), give or take anti-aliasing."""
    r, g, b = (pixels[..., c].astype(int) for c in range(3))
    return int(((r > 230) & (g > 180) & (g < 225) & (b < 40)).sum())


def test_every_renderer_leaves_a_flat_word_unoutlined_and_says_so():
    from scan_viz.app import views

    image = np.full((48, 48, 3), 90, np.uint8)
    alignment = alignment_36({"the": np.full(N36, 1 / N36), "of": peaked(5, 0.07), "dog": peaked(14, 0.6)})
    note_the = render.attention_peak(alignment.attention[1]).describe()

    figure = render.word_panels(image, alignment)  # what the PNG / SVG downloads and `scan-viz explain` draw
    for axes, flat in zip(figure.axes, (True, True, False)):
        assert (len(axes.patches) == 0) == flat and (len(axes.texts) == 0) == flat
        assert ("flat: no region stands out" in axes.get_title()) == flat
    assert note_the.replace(" (", "\n(") in figure.axes[0].get_title()
    assert "r14 0.60" in figure.axes[2].texts[0].get_text()
    assert b"flat: no region stands out" in render.figure_to_svg(figure)

    panels = views.word_panels(image, alignment)  # the app's panels (OpenCV)
    assert [p.flat for p in panels] == [True, True, False]
    assert panels[0].caption.endswith(note_the) and "flat: no region stands out (max 0.07" in panels[1].caption
    assert _yellow(panels[0].image) == 0 and _yellow(panels[1].image) == 0 and _yellow(panels[2].image) > 20
    assert panels[2].caption.endswith("r14 0.60")

    rows = views.relevance_rows(alignment)  # the Relevance tab's table
    assert [r["strongest region"] for r in rows] == [note_the, "flat: no region stands out (max 0.07, uniform 0.028)",
                                                     "14: r14"]

    interactive = render.plotly_alignment(image, alignment)
    titles = [button.args[1]["title.text"] for button in interactive.layout.updatemenus[0].buttons]
    assert note_the in titles[0] and "flat: no region stands out" in titles[1] and "flat" not in titles[2]


def test_interactive_view_shades_by_absolute_weight_with_a_colour_bar():
    image = np.full((48, 48, 3), 90, np.uint8)
    alignment = alignment_36({"the": np.full(N36, 1 / N36), "dog": peaked(14, 0.9)})
    figure = render.plotly_alignment(image, alignment)
    buttons = figure.layout.updatemenus[0].buttons

    def opacities(button) -> np.ndarray:
        return np.array([float(fill.rsplit(",", 1)[1].rstrip(")")) for fill in button.args[0]["fillcolor"]])

    flat, dog = opacities(buttons[0]), opacities(buttons[1])
    # a flat word leaves every box nearly clear (it used to paint all 36 at the strongest region's opacity)
    assert flat.max() < 0.05 and flat.max() == pytest.approx(flat.min())
    assert dog[14] == pytest.approx(0.01 + 0.59 * 0.9, abs=1e-3) and np.delete(dog, 14).max() < 0.05
    bar = next(trace for trace in figure.data if trace.name == render.COLOUR_BAR)
    assert bar.marker.showscale and (bar.marker.cmin, bar.marker.cmax) == (0.0, 1.0)
    assert bar.marker.colorbar.title.text == "attention weight"


def test_image_to_text_view_uses_one_colour_scale_for_the_figure():
    image = np.full((48, 48, 3), 90, np.uint8)
    # region 0 gives every word 0.05 (weak), region 1 gives "dog" 0.9: under per-row scaling both rows'
    # strongest words came out equally dark
    rows = {"the": np.full(N36, 1 / N36), "dog": peaked(1, 0.9)}
    rows["the"][0], rows["dog"][0] = 0.05, 0.05
    alignment = alignment_36(rows)
    figure = render.region_word_figure(image, alignment, regions=[0, 1])
    weak, strong = figure.axes[1], figure.axes[3]

    def shade(axes, word: str) -> tuple[float, ...]:
        text = next(t for t in axes.texts if t.get_text() == word)
        return tuple(text.get_bbox_patch().get_facecolor())

    assert shade(weak, "the") == shade(weak, "dog") == pytest.approx(tuple(render.SHADES(0.05)))
    assert shade(strong, "dog") == pytest.approx(tuple(render.SHADES(0.9)))
    assert sum(shade(weak, "dog")[:3]) > sum(shade(strong, "dog")[:3]) + 0.5  # the weak row stays pale
    colour_bar = figure.axes[-1]
    assert colour_bar.get_xlim() == (0.0, 1.0) and "one scale for every region" in colour_bar.get_xlabel()


@pytest.mark.parametrize("corner", [(52, 40, 64, 48), (0, 40, 10, 48), (56, 0, 64, 6)])
def test_word_panels_tag_stays_inside_its_panel_at_the_image_edges(image, corner):
    """The strongest region's tag ("label weight") is moved inside the panel, not cut off at the right or
    bottom edge ("banana 0.")."""
    boxes = BOXES.copy()
    boxes[1] = corner  # "zebra" (word 2) attends mostly to region 2 % 4 = 2; "a" (word 1) to region 1
    alignment = make_alignment(boxes=boxes)
    alignment.region_labels[1] = "a long region label"
    figure = render.word_panels(image, alignment, words=[1])
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    axes = figure.axes[0]
    (tag,) = axes.texts
    panel, box = axes.get_window_extent(renderer), tag.get_bbox_patch().get_window_extent(renderer)
    assert tag.get_text().startswith("a long region label ")
    assert panel.x0 - 0.5 <= box.x0 and box.x1 <= panel.x1 + 0.5 and panel.y0 - 0.5 <= box.y0, (panel, box)


def test_draw_boxes_label_at_the_right_edge_is_moved_inside():
    import cv2

    canvas = np.full((200, 300, 3), 128, np.uint8)
    label = "a long region label"
    drawn = render.draw_boxes(canvas, np.array([[260, 60, 300, 120]]), [label], colours=[(255, 0, 0)])
    scale = max(0.35, 200 / 900)
    (text_w, text_h), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    red = (drawn[..., 0] > 200) & (drawn[..., 1] < 80) & (drawn[..., 2] < 80)
    label_row = red[60 - text_h - base - 1]  # the label background's first row, above the box
    assert label_row.sum() >= text_w + 4 and label_row[-1]  # all of it drawn, ending at the right edge
