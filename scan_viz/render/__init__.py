"""Pure drawing: an image array and an Alignment in, a figure (or an array) out; no model calls.

The SCAN paper (Lee et al., ECCV 2018, Fig. 5/6) shows each word's attention as the image darkened
everywhere except the regions the word attends to. ``word_panels`` draws that figure, ``region_word_figure``
the image-to-text view (each region's attention over the words), ``plotly_alignment`` an interactive
version for the app, ``word_panel_images`` the same panels as arrays for a screen; every bar chart is drawn from
one :class:`Bars`. Labels, box scaling, the highlight colour and the flat-attention rule are decided once, below,
for every view (docs/rendering.md). Matplotlib figures are built on ``matplotlib.figure.Figure`` with the Agg canvas,
never pyplot, so drawing holds no global state and is safe from the app's threads.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Rectangle
from matplotlib.transforms import offset_copy

from scan_viz.errors import ScanVizError
from scan_viz.regions.images import fit_within, image_to_png_bytes
from scan_viz.text import END, PAD, START, UNK
from scan_viz.types import Alignment

if TYPE_CHECKING:
    import plotly.graph_objects as go

#: Brightness of unattended pixels in a word panel: dark enough to show where the word looks, light enough
#: to see the rest of the scene.
DIM_FLOOR = 0.15
#: Outline of the strongest region; yellow reads on both the darkened and the bright parts of a panel.
HIGHLIGHT_RGB: tuple[int, int, int] = (255, 204, 0)
HIGHLIGHT = "#{:02x}{:02x}{:02x}".format(*HIGHLIGHT_RGB)
#: Shades of the image-to-text view, weight 0 -> 1 (the light and dark ends of Oranges, both readable under text).
SHADES = ListedColormap(colormaps["Oranges"](np.linspace(0.08, 0.88, 256)), name="scan_viz_shades")
#: draw_boxes' colours (RGB), matplotlib's tab10.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
_SPECIAL_WORDS = frozenset({START, END, PAD})
#: A word's attention is "flat" when no region gets FLAT_FACTOR times its uniform share 1/n_regions. Measured with
#: the bundled scan-emoji-t2i on its 1,000-image gallery (36 regions, uniform share 0.028): function words peak
#: at 0.057 median, 0.080 at the 75th percentile (74% fall under 3/36 = 0.083), object and colour words at
#: 0.55 / 0.22 median (90% and 91.5% stay above); a grounded word's strongest region is right (pointing, IoU
#: >= 0.5) 92% of the time above the line and 64% below it; on photographs (out of domain) every word of three
#: test sentences peaked at 1.1-2.8x uniform. See :func:`attention_peak`.
FLAT_FACTOR = 3.0


# ----------------------------------------------------------------------------- what every view shows the same way


def _check_image(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        raise ScanVizError(f"expected an (H, W, 3) uint8 RGB image, got {array.dtype} {array.shape}: "
                           "load it with scan_viz.regions.images.load_image")
    return array


def _word_matrix(alignment: Alignment) -> np.ndarray:
    """(n_words, n_regions) float64 attention, checked against the words and boxes."""
    matrix = np.nan_to_num(np.asarray(alignment.attention, dtype=np.float64))
    if matrix.ndim != 2 or matrix.shape[0] != len(alignment.words):
        raise ScanVizError(f"the alignment's attention has shape "
                           f"{np.shape(alignment.attention)} for {len(alignment.words)} words: rebuild the alignment")
    return matrix


def display_boxes(alignment: Alignment, image: np.ndarray, original: np.ndarray | None = None) -> np.ndarray:
    """(n_regions, 4) the alignment's boxes in the pixels of ``image``, the picture being drawn on.

    The boxes are in the pixels of the picture the regions were found in: ``alignment.image_size`` (width,
    height) when the alignment knows it, else ``original`` (the array ``image`` is a resized copy of), else
    ``image`` itself. Every view (matplotlib, plotly, the app's panel arrays) scales boxes here.
    """
    if alignment.boxes is None:
        raise ScanVizError("this alignment has no region boxes (precomputed features carry none): "
                           "explain an image run through the detector to draw it")
    boxes = np.asarray(alignment.boxes, dtype=np.float64).reshape(-1, 4)
    n_regions = _word_matrix(alignment).shape[1]
    if len(boxes) != n_regions:
        raise ScanVizError(f"the alignment has {len(boxes)} boxes for {n_regions} regions: rebuild the alignment")
    if alignment.image_size:
        width, height = alignment.image_size
    elif original is not None:
        height, width = np.shape(original)[:2]
    else:
        return boxes
    return boxes * np.array([image.shape[1] / width, image.shape[0] / height] * 2)


def region_label(alignment: Alignment, region: int) -> str:
    """A region's name as every view shows it: its detector label, or ``region 3`` when it has none."""
    labels = alignment.region_labels
    return labels[region] if labels and region < len(labels) and labels[region] else f"region {region}"


def is_special(word: str) -> bool:
    """``<start>``, ``<end>`` (and ``<pad>``): tokens SCAN attends with that the user did not write."""
    return word in _SPECIAL_WORDS


def content_words(alignment: Alignment) -> list[int]:
    """Indices into ``alignment.words`` of the sentence's own words (``<start>``/``<end>`` left out)."""
    return [i for i, w in enumerate(alignment.words) if not is_special(w)]


def _chosen(indices: Sequence[int] | None, count: int, default: list[int], what: str) -> list[int]:
    chosen = list(default if indices is None else indices)
    bad = [i for i in chosen if not 0 <= int(i) < count]
    if bad:
        raise ScanVizError(f"{what} {bad} out of range: there are {count} {what}s (0 to {count - 1})")
    if not chosen:
        raise ScanVizError(f"no {what}s to draw: choose at least one")
    return [int(i) for i in chosen]


def _chosen_words(alignment: Alignment, words: Sequence[int] | None, show_specials: bool) -> list[int]:
    """The user's words by default; ``<start>``/``<end>`` only when asked (they take part in SCAN's attention)."""
    default = list(range(len(alignment.words))) if show_specials else content_words(alignment)
    return _chosen(words, len(alignment.words), default, "word")


def word_label(alignment: Alignment, index: int, numbered: bool = False) -> str:
    """A word as every view shows it: ``<unk>`` marked where the vocabulary lacks it (``zebra (<unk>)``);
    ``numbered``: a repeated word gets its position (``a (1)``, ``a (7)``), so each word has its own label."""
    word = alignment.words[index]
    unknown = index < len(alignment.unknown) and alignment.unknown[index] and word != UNK
    label = f"{word} ({UNK})" if unknown else word
    if numbered and alignment.words.count(word) > 1:
        label += f" ({index})"
    return label


def relevance_text(alignment: Alignment, index: int) -> str | None:
    """What the head says about one word under its own label (``R = 0.52``), or None for a head without
    per-word relevance."""
    if alignment.word_relevance is None:
        return None
    return f"{alignment.word_relevance_label} = {float(np.asarray(alignment.word_relevance)[index]):.2f}"


def peak_tag(alignment: Alignment, weights: np.ndarray, region: int) -> str:
    """The tag on a word's strongest region: its label and the word's weight on it (``dog 0.61``)."""
    return f"{region_label(alignment, region)} {float(weights[region]):.2f}"


def strongest_regions(alignment: Alignment, top: int) -> list[int]:
    """The ``top`` regions worth showing, strongest first: by the head's per-region relevance (SCAN i2t's R,
    CAAN's weights), else by the attention they receive over all words (ties keep region order)."""
    matrix = _word_matrix(alignment)
    if alignment.region_relevance is not None and np.size(alignment.region_relevance) == matrix.shape[1]:
        strength = np.asarray(alignment.region_relevance, dtype=np.float64).reshape(-1)
    else:
        strength = matrix.sum(axis=0)
    return [int(k) for k in np.argsort(-strength, kind="stable")[: max(1, top)]]


def word_caption(alignment: Alignment, index: int, sep: str = "\n") -> str:
    """A word (``<unk>`` marked) and what the head says about it: its relevance by the head's label
    (``R = 0.52``), or, for a head without per-word relevance, what its word map is."""
    relevance = relevance_text(alignment, index)
    return f"{word_label(alignment, index)}{sep}{relevance or f'({alignment.attention_label})'}"


def region_caption(alignment: Alignment, region: int) -> str:
    """``3: dog`` plus the head's per-region relevance where it has one (``R = 0.41``)."""
    text = f"{region}: {region_label(alignment, region)}"
    if alignment.region_relevance is not None:
        text += f"  {alignment.region_relevance_label} = {float(np.asarray(alignment.region_relevance)[region]):.2f}"
    return text


# ----------------------------------------------------------------------------- does a region stand out?


@dataclasses.dataclass(frozen=True)
class Peak:
    """A word's strongest region, and whether it stands out from the rest (see :func:`attention_peak`).

    region: index of the largest weight; weight: that weight as given; share: its fraction of the word's total
    weight over the regions; uniform: 1 / n_regions, the share of every region under flat attention.
    """

    region: int
    weight: float
    share: float
    uniform: float
    flat: bool

    def describe(self, sep: str = " ") -> str:
        """What a panel says in place of an outline: ``flat: no region stands out (max 0.03, uniform 0.028)``;
        ``sep`` goes before the parenthesis (a newline in narrow panels)."""
        return f"flat: no region stands out{sep}(max {self.share:.2f}, uniform {self.uniform:.3f})"


def attention_peak(weights: np.ndarray, factor: float = FLAT_FACTOR) -> Peak:
    """The strongest region of one word's weights (n_regions,), and whether the attention is flat.

    Flat: the largest share of the word's weight is below ``factor / n_regions`` (``FLAT_FACTOR`` = 3 times the
    uniform share; the measurements behind it are at its definition). With few regions that bound would
    exceed what one region can hold, so it is capped at halfway between uniform and all-on-one-region:
    with 2 regions a word is flat below a 0.75 share. A word with no positive weight is flat. t2i rows sum to
    1, so share = weight; an i2t word map (a column of region-to-word weights) is judged by its shares.
    Every view (matplotlib panels, the app's panels, the interactive figure, the word table) uses this rule.
    """
    values = np.clip(np.nan_to_num(np.asarray(weights, dtype=np.float64).reshape(-1)), 0.0, None)
    n = max(len(values), 1)
    uniform = 1.0 / n
    total = float(values.sum())
    region = int(np.argmax(values)) if len(values) else 0
    if total <= 0:
        return Peak(region, 0.0, 0.0, uniform, True)
    share = float(values[region]) / total
    bound = min(factor * uniform, (1.0 + uniform) / 2)
    return Peak(region, float(values[region]), share, uniform, share < bound)


# ----------------------------------------------------------------------------- maps and shaded images


def attention_map(boxes: np.ndarray, weights: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(height, width) float32 in [0, 1]: each pixel's summed weight over the boxes covering it, over the max.

    boxes: (n, 4) x1, y1, x2, y2 pixels, clipped to the image; a box covers the pixels it touches.
    weights: (n,) non-negative (negatives count as 0). size: (width, height). All zero if no weight lands.
    Painted with a 2-D difference array and two cumulative sums, O(n + width * height).
    """
    width, height = int(size[0]), int(size[1])
    if width < 1 or height < 1:
        raise ScanVizError(f"cannot paint an attention map of size {width}x{height}: give a positive (width, height)")
    boxes = np.asarray(boxes, dtype=np.float64)
    weights = np.clip(np.nan_to_num(np.asarray(weights, dtype=np.float64).reshape(-1)), 0.0, None)
    if boxes.size == 0:
        return np.zeros((height, width), np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) != len(weights):
        raise ScanVizError(f"got boxes of shape {boxes.shape} and {len(weights)} weights: "
                           "pass (n, 4) boxes and (n,) weights")
    boxes = np.nan_to_num(boxes)
    left = np.clip(np.floor(np.minimum(boxes[:, 0], boxes[:, 2])), 0, width).astype(np.int64)
    right = np.clip(np.ceil(np.maximum(boxes[:, 0], boxes[:, 2])), 0, width).astype(np.int64)
    top = np.clip(np.floor(np.minimum(boxes[:, 1], boxes[:, 3])), 0, height).astype(np.int64)
    bottom = np.clip(np.ceil(np.maximum(boxes[:, 1], boxes[:, 3])), 0, height).astype(np.int64)
    keep = (right > left) & (bottom > top) & (weights > 0)
    left, right, top, bottom, weights = left[keep], right[keep], top[keep], bottom[keep], weights[keep]
    diff = np.zeros((height + 1, width + 1), np.float64)
    np.add.at(diff, (top, left), weights)
    np.add.at(diff, (top, right), -weights)
    np.add.at(diff, (bottom, left), -weights)
    np.add.at(diff, (bottom, right), weights)
    painted = diff.cumsum(axis=0).cumsum(axis=1)[:height, :width]
    # the running sums leave ~1e-16 where boxes cancel out; those pixels are covered by nothing
    painted[painted < 1e-9 * max(float(weights.sum()), 1e-300)] = 0.0
    peak = float(painted.max()) if painted.size else 0.0
    if peak <= 0:
        return np.zeros((height, width), np.float32)
    return np.clip(painted / peak, 0.0, 1.0).astype(np.float32)


def panel_image(image: np.ndarray, weights: np.ndarray, boxes: np.ndarray, floor: float = DIM_FLOOR) -> np.ndarray:
    """(H, W, 3) uint8: ``image`` lit by attention, ``image * (floor + (1 - floor) * map)``.

    weights: (n_regions,) one word's attention; boxes: (n_regions, 4) in the image's pixels.
    """
    image = _check_image(image)
    lit = attention_map(boxes, weights, (image.shape[1], image.shape[0]))
    gain = floor + (1.0 - floor) * lit
    return np.clip(np.rint(image * gain[:, :, None]), 0, 255).astype(np.uint8)


def _new_figure(width_in: float, height_in: float, **kwargs: Any) -> Figure:
    figure = Figure(figsize=(width_in, height_in), **kwargs)
    FigureCanvasAgg(figure)
    return figure


def word_panels(image: np.ndarray, alignment: Alignment, words: list[int] | None = None, cols: int = 4,
                show_specials: bool = False, labels: bool = True) -> Figure:
    """The SCAN paper's figure: one panel per word, the image lit where that word attends.

    image: (H, W, 3) uint8, the alignment's image (boxes are rescaled if it was resized). words: indices into
    ``alignment.words``; by default every word but ``<start>``/``<end>`` (``show_specials`` adds them).
    The strongest region of each word is outlined and, with ``labels``, tagged with its label and weight,
    unless the word's attention is flat (:func:`attention_peak`): then the title says so and nothing is outlined.
    """
    image = _check_image(image)
    boxes = display_boxes(alignment, image)
    matrix = _word_matrix(alignment)
    chosen = _chosen_words(alignment, words, show_specials)
    cols = max(1, min(int(cols), len(chosen)))
    rows = math.ceil(len(chosen) / cols)
    height, width = image.shape[:2]
    panel_w = 3.2
    panel_h = panel_w * min(max(height / width, 0.2), 3.0) + 0.85  # room for a title of up to four lines
    figure = _new_figure(cols * panel_w, rows * panel_h, layout="constrained")
    tags = []
    for slot, word in enumerate(chosen):
        axes = figure.add_subplot(rows, cols, slot + 1)
        weights = matrix[word]
        axes.imshow(panel_image(image, weights, boxes), interpolation="nearest")
        peak = attention_peak(weights)
        title = word_caption(alignment, word)
        if peak.flat:
            title += "\n" + peak.describe(sep="\n")
        axes.set_title(title, fontsize=9)
        axes.set_axis_off()
        if peak.flat:
            continue
        top = peak.region
        x1, y1, x2, y2 = np.clip(boxes[top], 0, [width, height, width, height])
        axes.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=HIGHLIGHT, linewidth=2))
        if labels:
            tag = axes.text(x1 + 2, y1 + 2, peak_tag(alignment, weights, top), fontsize=7,
                            va="top", ha="left", color="black", clip_on=True,
                            bbox={"facecolor": HIGHLIGHT, "edgecolor": "none", "pad": 1.5, "alpha": 0.9})
            tags.append((axes, tag))
    _keep_inside(figure, tags)
    return figure


def _keep_inside(figure: Figure, tags: list[tuple[Any, Any]]) -> None:
    """Move each box's tag left (and up) until it fits in its panel: a box at the image's right edge had its tag
    cut off ("banana 0."). The tags' sizes are known only once the layout is drawn, hence one draw first."""
    if not tags:
        return
    renderer = figure.canvas.get_renderer()
    figure.draw_without_rendering()
    for axes, tag in tags:
        panel = axes.get_window_extent(renderer)
        box = tag.get_bbox_patch().get_window_extent(renderer)  # the tag's background, text included
        shift_x = min(0.0, panel.x1 - box.x1)  # display units: left until its right end is inside
        shift_x = max(shift_x, panel.x0 - box.x0)  # but never past the left edge (a tag wider than the panel)
        shift_y = max(0.0, panel.y0 - box.y0)  # display y grows upwards: a tag below the panel moves up
        if shift_x or shift_y:
            x, y = axes.transData.transform(tag.get_position())
            tag.set_position(axes.transData.inverted().transform((x + shift_x, y + shift_y)))


#: Longest side of a word panel drawn as an array (the app's screen), in pixels: the gallery's 320x256 scenes 1:1.
PANEL_SIDE = 400


@dataclasses.dataclass
class WordPanel:
    """One word's panel as an array: the image lit where the word attends, its strongest region outlined and
    tagged unless the attention is flat (then ``flat`` is True and the caption says so)."""

    word_index: int
    word: str
    caption: str
    image: np.ndarray  # (h, w, 3) uint8
    top_region: int
    top_weight: float
    flat: bool


def word_panel_images(image: np.ndarray, alignment: Alignment, side: int = PANEL_SIDE) -> list[WordPanel]:
    """:func:`word_panels` as one small array per word, each at most ``side`` pixels a side (OpenCV, no figure).

    A grid of arrays encodes in tens of milliseconds where a matplotlib grid of a 640x480 photo takes over a
    second, and separate images reflow with a window: the app shows these, the downloads and the command line
    :func:`word_panels`. Same words, lighting, outline, tag and flat rule; the caption is one line,
    ``dog · R = 0.52 · dog 0.61``.
    """
    original = _check_image(image)
    shown, _ = fit_within(original, side, side)
    boxes = display_boxes(alignment, shown, original)
    matrix = _word_matrix(alignment)
    panels = []
    for i in content_words(alignment):
        weights = matrix[i]
        peak = attention_peak(weights)
        top = peak.region
        lit = panel_image(shown, weights, boxes)
        where = peak_tag(alignment, weights, top)
        if peak.flat:
            where = peak.describe()
        else:
            lit = draw_boxes(lit, boxes[top:top + 1], [where], colours=[HIGHLIGHT_RGB], thickness=2)
        relevance = relevance_text(alignment, i)
        caption = " \u00b7 ".join(part for part in (word_label(alignment, i), relevance, where) if part)
        panels.append(WordPanel(i, alignment.words[i], caption, lit, top, float(weights[top]), peak.flat))
    return panels


def region_word_figure(image: np.ndarray, alignment: Alignment, regions: list[int] | None = None, top: int = 8,
                       show_specials: bool = False) -> Figure:
    """The image-to-text view: per region, its crop beside the sentence shaded by its attention over the words.

    image: (H, W, 3) uint8. regions: indices into the alignment's regions; by default the ``top`` regions by the
    head's per-region relevance (SCAN i2t's R, CAAN's weights), else by total attention received. Each word's shade is the attention weight between
    the region and the word on one fixed 0-1 scale for the whole figure (the colour bar at the bottom), so a weak
    region's words stay pale; the weight is printed under the word.
    """
    image = _check_image(image)
    boxes = display_boxes(alignment, image)
    matrix = _word_matrix(alignment)
    chosen = _chosen(regions, matrix.shape[1], strongest_regions(alignment, top), "region")
    shown = _chosen_words(alignment, None, show_specials)
    names = [word_label(alignment, i) for i in shown]

    # lay the sentence out once in points (same words for every region), then size the figure to fit it
    dpi, font_size, gap = 100.0, 10.0, 8.0
    crop_in, text_in, margin_in, title_in = 1.4, 6.4, 0.15, 0.3
    figure = _new_figure(crop_in + text_in + 3 * margin_in, 1.0, dpi=dpi)
    renderer = figure.canvas.get_renderer()
    font = FontProperties(size=font_size)
    line_pt = font_size * 2.9  # a word and its weight beneath
    x, line, places = 0.0, 0, []
    for name in names:
        width_px, _, _ = renderer.get_text_width_height_descent(name, font, ismath=False)
        width_pt = width_px * 72.0 / dpi + 4.0  # plus the shading box's padding
        if x > 0 and x + width_pt > text_in * 72.0:
            x, line = 0.0, line + 1
        places.append((x, line, width_pt))
        x += width_pt + gap
    text_in = min(text_in, max(x_pt + w_pt for x_pt, _, w_pt in places) / 72.0 + 0.1)  # short sentences: narrow
    row_in = max(crop_in, (line + 1) * line_pt / 72.0 + 0.2) + title_in
    colorbar_in = 0.75
    total_in = len(chosen) * row_in + margin_in + colorbar_in
    total_w = crop_in + text_in + 3 * margin_in
    figure.set_size_inches(total_w, total_in)

    colormap = SHADES
    height, width = image.shape[:2]
    for row, region in enumerate(chosen):
        bottom_in = total_in - margin_in - (row + 1) * row_in
        crop_axes = figure.add_axes((margin_in / total_w, bottom_in / total_in,
                                     crop_in / total_w, (row_in - title_in) / total_in))
        x1, y1, x2, y2 = np.clip(np.rint(boxes[region]), 0, [width, height, width, height]).astype(int)
        crop = image[y1:y2, x1:x2] if x2 > x1 and y2 > y1 else np.zeros((1, 1, 3), np.uint8)
        crop_axes.imshow(crop, interpolation="nearest")
        crop_axes.set_anchor("NW")  # crop and title flush with the top of the row, level with the words
        crop_axes.set_axis_off()
        crop_axes.set_title(region_caption(alignment, region), fontsize=9, loc="left")

        text_axes = figure.add_axes(((2 * margin_in + crop_in) / total_w, bottom_in / total_in,
                                     text_in / total_w, (row_in - title_in) / total_in))
        text_axes.set_axis_off()
        weights = matrix[shown, region]
        for name, weight, (x_pt, line_no, width_pt) in zip(names, weights, places):
            strength = min(max(float(weight), 0.0), 1.0)
            # words sit at fixed offsets in points from the text axes' top-left corner, as laid out above
            y_pt = -(line_no + 0.5) * line_pt
            origin = text_axes.transAxes
            place = offset_copy(origin, fig=figure, x=x_pt + width_pt / 2, y=y_pt, units="points")
            text_axes.text(0, 1, name, transform=place, ha="center", va="center", fontsize=font_size,
                           color="white" if strength > 0.6 else "black",
                           bbox={"boxstyle": "round,pad=0.25", "facecolor": colormap(strength),
                                 "edgecolor": "none"})
            below = offset_copy(origin, fig=figure, x=x_pt + width_pt / 2, y=y_pt - font_size * 1.3, units="points")
            text_axes.text(0, 1, f"{weight:.2f}", transform=below, ha="center", va="center", fontsize=7,
                           color="#555555")
    bar_axes = figure.add_axes(((2 * margin_in + crop_in) / total_w, 0.42 / total_in,
                                min(text_in, 4.0) / total_w, 0.14 / total_in))
    colorbar = figure.colorbar(ScalarMappable(Normalize(0.0, 1.0), colormap), cax=bar_axes, orientation="horizontal")
    colorbar.set_label(f"{alignment.attention_label} (one scale for every region)", fontsize=8)
    colorbar.ax.tick_params(labelsize=7)
    return figure


# ----------------------------------------------------------------------------- bar charts


#: Bar colours: one colour for a plain chart; a signed chart (score changes) shows drops red, gains green.
BAR, DROP, GAIN = "#1f77b4", "#d62728", "#2ca02c"
DELTA_SCORE = "\u0394 score"


@dataclasses.dataclass(frozen=True)
class Bars:
    """One bar chart's data, in reading order (first label on top): what every bar chart is drawn from.

    labels: one per bar (may hold a visitor's words: :func:`plotly_bars` escapes them); values: the bars' lengths;
    title; axis: the value axis' title; signed: a score change, drops red and gains green (else one colour).
    """

    labels: list[str]
    values: list[float]
    title: str
    axis: str
    signed: bool = False

    @property
    def colours(self) -> list[str]:
        return [(DROP if v < 0 else GAIN) if self.signed else BAR for v in self.values]


def word_relevance_bars(alignment: Alignment) -> Bars | None:
    """The head's per-word relevance (SCAN t2i's R, CHAN's best-region cosine, CAAN's word weights) over the
    sentence's own words, labelled ``3: dog``; None for a head without it."""
    if alignment.word_relevance is None:
        return None
    values = np.asarray(alignment.word_relevance, dtype=np.float64).reshape(-1)
    if len(values) != len(alignment.words):
        raise ScanVizError(f"{len(values)} relevance values for {len(alignment.words)} words: rebuild the alignment")
    words = content_words(alignment)
    label = alignment.word_relevance_label
    return Bars([f"{i}: {alignment.words[i]}" for i in words], [float(values[i]) for i in words],
                f"{label} per word", label)


def region_relevance_bars(alignment: Alignment, top: int, title: str | None = None) -> Bars | None:
    """The ``top`` regions by the head's per-region relevance (SCAN i2t's R, CAAN's region weights), strongest
    first, labelled ``3: dog``; None for a head without it. title: by default ``R per region, top 12 regions``."""
    if alignment.region_relevance is None:
        return None
    values = np.asarray(alignment.region_relevance, dtype=np.float64).reshape(-1)
    label = alignment.region_relevance_label
    regions = strongest_regions(alignment, top)
    return Bars([f"{r}: {region_label(alignment, r)}" for r in regions], [float(values[r]) for r in regions],
                title or f"{label} per region, top {top} regions", label)


def ablation_bars(alignment: Alignment, ablation: dict[str, Any], top: int = 12) -> tuple[Bars, Bars]:
    """The score change when each word is removed (sentence order) and when each of the ``top`` regions that
    change it most is removed (largest change first), from :func:`scan_viz.pipeline.ablate`'s result."""
    words = ablation["words"]  # [(word, change)] for the sentence's own words, in order
    regions = sorted(ablation["regions"], key=lambda rd: -abs(rd[1]))[:top]  # [(region index, change)]
    return (Bars([f"{i + 1}: {w}" for i, (w, _) in enumerate(words)], [d for _, d in words],
                 "remove a word", DELTA_SCORE, signed=True),
            Bars([f"{r}: {region_label(alignment, r)}" for r, _ in regions], [d for _, d in regions],
                 f"remove a region ({top} largest changes)", DELTA_SCORE, signed=True))


def plotly_bars(bars: Bars) -> go.Figure:
    """A horizontal plotly bar chart of ``bars`` in reading order (first label on top); labels are HTML-escaped
    (plotly renders a subset of HTML, ``<a href>``, ``<b>``, in them)."""
    import plotly.graph_objects as go

    figure = go.Figure(go.Bar(x=bars.values, y=[html.escape(label, quote=False) for label in bars.labels],
                              orientation="h", marker_color=bars.colours,
                              hovertemplate="%{y}: %{x:.4f}<extra></extra>"))
    figure.update_layout(title={"text": bars.title, "x": 0.0, "font": {"size": 14}},
                         xaxis={"title": bars.axis, "tickformat": ".3~g"},
                         yaxis={"autorange": "reversed", "type": "category"},
                         height=max(220, 26 * len(bars.labels) + 90), margin={"l": 10, "r": 10, "t": 40, "b": 40})
    return figure


#: The pointing chart's colours: the model against its two baselines.
POINTING_COLOURS = {"model": BAR, "random region": "#bbbbbb", "largest region": "#ff9f4a"}


def pointing_figure(pointing: dict[str, float], baselines: dict[str, dict[str, float]]) -> go.Figure:
    """Grouped bars of pointing accuracy (%) per word type: the model, a random region and the largest region
    (``scan_viz.evaluation.metrics.evaluate_pointing``'s ``pointing`` and ``baselines``)."""
    import plotly.graph_objects as go

    types = list(pointing)
    figure = go.Figure([go.Bar(name=name, x=types, y=[values[t] for t in types], marker_color=POINTING_COLOURS[name])
                        for name, values in (("model", pointing), ("random region", baselines["random"]),
                                             ("largest region", baselines["largest"]))])
    figure.update_layout(barmode="group", height=320, yaxis_title="% of words", margin={"t": 30, "b": 30},
                         title={"text": "Pointing accuracy per word type", "x": 0.0, "font": {"size": 14}})
    return figure


# ----------------------------------------------------------------------------- interactive (plotly)


#: Name of the interactive figure's trace that only carries the colour bar.
COLOUR_BAR = "colour bar"
#: Fill opacity of a region box at attention weight 0 and 1 (interactive view); the colour bar uses the same.
_FILL_ALPHA = (0.01, 0.6)


def _fill(weight: float) -> str:
    r, g, b = HIGHLIGHT_RGB
    low, high = _FILL_ALPHA
    return f"rgba({r},{g},{b},{low + (high - low) * weight:.3f})"


def _region_style(weights: np.ndarray) -> dict[str, list]:
    """Per-region fill, outline colour and width for one word's weights (n_regions,), on the fixed 0-1 scale.

    The weights are not rescaled to the word's largest one: a word spread evenly over 36 regions (0.03 each)
    leaves the image almost untouched instead of painting every box as if it were the strongest.
    """
    r, g, b = HIGHLIGHT_RGB
    strength = np.clip(np.nan_to_num(np.asarray(weights, dtype=np.float64)), 0.0, 1.0)
    return {
        "fillcolor": [_fill(s) for s in strength],
        "line.color": [f"rgba({r},{g},{b},{0.2 + 0.8 * s:.3f})" for s in strength],
        "line.width": [round(0.5 + 3.5 * float(s), 2) for s in strength],
    }


def plotly_alignment(image: np.ndarray, alignment: Alignment, word: int | None = None,
                     show_specials: bool = False, max_side: int = 1024) -> go.Figure:
    """Interactive alignment: the image with one hoverable box per region and a dropdown to pick the word.

    Each region's hover text lists its weight for every word; the chosen word's attention weight, on a fixed
    0-1 scale shown by a colour bar, sets each box's opacity and outline; a word whose attention is flat
    (:func:`attention_peak`) says so in the title. The background is a PNG data URI downscaled to ``max_side``
    pixels, so a figure of 36 regions x 20 words stays small. Coordinates are ``image``'s pixels.
    """
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise ScanVizError("the interactive view needs plotly: pip install plotly") from None
    image = _check_image(image)
    boxes = display_boxes(alignment, image)
    matrix = _word_matrix(alignment)
    choices = _chosen_words(alignment, None, show_specials)
    current = _chosen([word] if word is not None else None, len(alignment.words), choices[:1], "word")[0]
    if current not in choices:
        choices = sorted(choices + [current])
    height, width = image.shape[:2]

    shown, scale = fit_within(image, max_side, max_side)
    uri = "data:image/png;base64," + base64.b64encode(image_to_png_bytes(shown)).decode("ascii")
    figure = go.Figure(go.Image(source=uri, x0=0.5 / scale, y0=0.5 / scale, dx=1 / scale, dy=1 / scale,
                                hoverinfo="skip"))
    escaped = [html.escape(w) for w in alignment.words]
    style = _region_style(matrix[current])
    for region, (x1, y1, x2, y2) in enumerate(boxes):
        parts = [f"{escaped[i]} {matrix[i, region]:.2f}" for i in range(len(escaped))]
        lines = [" | ".join(parts[i:i + 6]) for i in range(0, len(parts), 6)]
        label = html.escape(region_label(alignment, region))
        figure.add_trace(go.Scatter(
            x=[x1, x2, x2, x1, x1], y=[y1, y1, y2, y2, y1], mode="lines", fill="toself",
            fillcolor=style["fillcolor"][region],
            line={"color": style["line.color"][region], "width": style["line.width"][region]},
            hoveron="fills", hoverinfo="text", text=f"<b>{region}: {label}</b><br>" + "<br>".join(lines),
            name=f"{region}: {label}", showlegend=False))

    figure.add_trace(go.Scatter(  # carries the colour bar only: one invisible point
        x=[None], y=[None], mode="markers", hoverinfo="skip", showlegend=False, name=COLOUR_BAR,
        marker={"color": [0.0], "cmin": 0.0, "cmax": 1.0, "showscale": True,
                "colorscale": [[0.0, _fill(0.0)], [1.0, _fill(1.0)]],
                "colorbar": {"title": {"text": html.escape(alignment.attention_label), "side": "right"}, "thickness": 14,
                             "len": 0.8, "tickvals": [0, 0.25, 0.5, 0.75, 1.0]}}))

    region_traces = list(range(1, len(boxes) + 1))
    counts: dict[str, int] = {}
    for i in choices:
        counts[alignment.words[i]] = counts.get(alignment.words[i], 0) + 1

    def title(i: int) -> str:
        text = html.escape(word_caption(alignment, i, sep=": "))
        peak = attention_peak(matrix[i])
        return f"{text}<br><sub>{peak.describe()}</sub>" if peak.flat else text

    buttons = [
        {"label": html.escape(alignment.words[i] if counts[alignment.words[i]] == 1 else f"{alignment.words[i]} ({i})"),
         "method": "update", "args": [_region_style(matrix[i]), {"title.text": title(i)}, region_traces]}
        for i in choices
    ]
    figure.update_layout(
        title={"text": title(current), "x": 0.5},
        updatemenus=[{"type": "dropdown", "buttons": buttons, "active": choices.index(current),
                      "x": 0.0, "xanchor": "left", "y": 1.0, "yanchor": "bottom", "showactive": True}],
        xaxis={"range": [0, width], "visible": False, "constrain": "domain"},
        yaxis={"range": [height, 0], "visible": False, "scaleanchor": "x", "constrain": "domain"},
        margin={"l": 10, "r": 10, "t": 70, "b": 10}, hovermode="closest",
        height=int(min(900, 90 + 640 * height / width)), width=740,
    )
    return figure


# ----------------------------------------------------------------------------- one picture per head (Compare)


def overview_image(image: np.ndarray, alignment: Alignment) -> np.ndarray:
    """(H, W, 3) uint8: the whole alignment in one picture, for any head (the app's Compare view).

    The image is lit by the head's per-region relevance where it has one (CAAN's region weights, SCAN i2t's R,
    negatives as 0), else by the attention the regions receive over the sentence's words; each word that
    picks out a region (its map is not flat, :func:`attention_peak`) tags that region's box with the word, words
    sharing a region in one tag. So CHAN shows one box per word, SCAN t2i each word's strongest region.
    """
    image = _check_image(image)
    boxes = display_boxes(alignment, image)
    matrix = _word_matrix(alignment)
    words = _chosen_words(alignment, None, show_specials=False)
    if alignment.region_relevance is not None and np.size(alignment.region_relevance) == matrix.shape[1]:
        light = np.asarray(alignment.region_relevance, dtype=np.float64)
    else:
        light = matrix[words].sum(axis=0)
    lit = panel_image(image, light, boxes)
    tags: dict[int, list[str]] = {}
    for word in words:
        peak = attention_peak(matrix[word])
        if not peak.flat:
            tags.setdefault(peak.region, []).append(alignment.words[word])
    regions = sorted(tags)
    return draw_boxes(lit, boxes[regions] if regions else np.zeros((0, 4)), [", ".join(tags[r]) for r in regions])


# ----------------------------------------------------------------------------- export and quick overlays


def _check_matplotlib(figure: Any) -> Figure:
    if not isinstance(figure, Figure):
        raise ScanVizError(f"cannot export a {type(figure).__name__} as an image here: static export takes a "
                           "matplotlib figure (download the interactive view as HTML or JSON instead)")
    return figure


def figure_to_png(figure: Figure, dpi: int = 110) -> bytes:
    """PNG file bytes of a matplotlib figure."""
    buffer = io.BytesIO()
    _check_matplotlib(figure).savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


def figure_to_svg(figure: Figure) -> bytes:
    """SVG file bytes of a matplotlib figure."""
    buffer = io.BytesIO()
    _check_matplotlib(figure).savefig(buffer, format="svg", facecolor="white")
    return buffer.getvalue()


def draw_boxes(image: np.ndarray, boxes: np.ndarray, labels: Sequence[str] | None = None,
               colours: Sequence[tuple[int, int, int]] | None = None, thickness: int = 2) -> np.ndarray:
    """A copy of the (H, W, 3) uint8 RGB ``image`` with (n, 4) x1, y1, x2, y2 boxes and their labels drawn.

    colours: RGB per box (cycled); matplotlib's tab10 by default.
    """
    canvas = _check_image(image).copy()
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if np.size(boxes) else np.zeros((0, 4))
    if labels is not None and len(labels) != len(boxes):
        raise ScanVizError(f"got {len(labels)} labels for {len(boxes)} boxes: pass one label per box")
    palette = list(colours) if colours else list(PALETTE)
    height, width = canvas.shape[:2]
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.35, min(width, height) / 900)
    for k, box in enumerate(np.nan_to_num(boxes)):
        colour = tuple(int(c) for c in palette[k % len(palette)])
        x1, y1, x2, y2 = np.clip(np.rint(box), -1, [width, height, width, height]).astype(int).tolist()
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness, lineType=cv2.LINE_AA)
        if labels is None or not labels[k]:
            continue
        (text_w, text_h), base = cv2.getTextSize(str(labels[k]), font, scale, 1)
        top = max(y1 - text_h - base - 2, 0)  # above the box, or inside it at the image's top edge
        left = max(min(x1, width - text_w - 4), 0)  # moved left at the image's right edge, not cut off
        cv2.rectangle(canvas, (left, top), (left + text_w + 4, top + text_h + base + 2), colour, cv2.FILLED)
        ink = (0, 0, 0) if sum(colour) > 382 else (255, 255, 255)
        cv2.putText(canvas, str(labels[k]), (left + 2, top + text_h + 1), font, scale, ink, 1, cv2.LINE_AA)
    return canvas


__all__ = [
    "FLAT_FACTOR",
    "HIGHLIGHT",
    "HIGHLIGHT_RGB",
    "PANEL_SIDE",
    "Bars",
    "Peak",
    "WordPanel",
    "ablation_bars",
    "attention_map",
    "attention_peak",
    "content_words",
    "display_boxes",
    "draw_boxes",
    "figure_to_png",
    "figure_to_svg",
    "is_special",
    "overview_image",
    "panel_image",
    "peak_tag",
    "plotly_alignment",
    "plotly_bars",
    "pointing_figure",
    "region_caption",
    "region_label",
    "region_relevance_bars",
    "region_word_figure",
    "relevance_text",
    "strongest_regions",
    "word_caption",
    "word_label",
    "word_panel_images",
    "word_panels",
    "word_relevance_bars",
]
