"""Pure drawing: an image array and an Alignment in, a figure (or an array) out; no model calls.

The SCAN paper (Lee et al., ECCV 2018, Fig. 5/6) shows each word's attention as the image darkened
everywhere except the regions the word attends to. ``word_panels`` draws that figure, ``region_word_figure``
the image-to-text view (each region's attention over the words), ``plotly_alignment`` an interactive
version for the app. Matplotlib figures are built on ``matplotlib.figure.Figure`` with the Agg canvas,
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
HIGHLIGHT = "#ffcc00"
_HIGHLIGHT_RGB = (255, 204, 0)
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


# ----------------------------------------------------------------------------- checks shared by the views


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


def _display_boxes(image: np.ndarray, alignment: Alignment) -> np.ndarray:
    """(n_regions, 4) boxes in the pixels of ``image``, rescaled if it was resized from ``image_size``."""
    if alignment.boxes is None:
        raise ScanVizError("this alignment has no region boxes (precomputed features carry none): "
                           "explain an image run through the detector to draw it")
    boxes = np.asarray(alignment.boxes, dtype=np.float64).reshape(-1, 4)
    n_regions = _word_matrix(alignment).shape[1]
    if len(boxes) != n_regions:
        raise ScanVizError(f"the alignment has {len(boxes)} boxes for {n_regions} regions: rebuild the alignment")
    if alignment.image_size:
        width, height = alignment.image_size
        boxes = boxes * np.array([image.shape[1] / width, image.shape[0] / height] * 2)
    return boxes


def _region_label(alignment: Alignment, region: int) -> str:
    labels = alignment.region_labels
    return labels[region] if labels and region < len(labels) and labels[region] else f"region {region}"


def _is_special(word: str) -> bool:
    return word in _SPECIAL_WORDS


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
    default = [i for i, w in enumerate(alignment.words) if show_specials or not _is_special(w)]
    return _chosen(words, len(alignment.words), default, "word")


def _word_name(alignment: Alignment, index: int) -> str:
    word = alignment.words[index]
    unknown = index < len(alignment.unknown) and alignment.unknown[index] and word != UNK
    return f"{word} ({UNK})" if unknown else word


def word_caption(alignment: Alignment, index: int, sep: str = "\n") -> str:
    """A word (``<unk>`` marked) and what the head says about it: its relevance by the head's label
    (``R = 0.52``), or, for a head without per-word relevance, what its word map is."""
    name = _word_name(alignment, index)
    if alignment.word_relevance is not None:
        value = float(np.asarray(alignment.word_relevance)[index])
        return f"{name}{sep}{alignment.word_relevance_label} = {value:.2f}"
    return f"{name}{sep}({alignment.attention_label})"


def region_caption(alignment: Alignment, region: int) -> str:
    """``3: dog`` plus the head's per-region relevance where it has one (``R = 0.41``)."""
    text = f"{region}: {_region_label(alignment, region)}"
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
    boxes = _display_boxes(image, alignment)
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
            tag = axes.text(x1 + 2, y1 + 2, f"{_region_label(alignment, top)} {weights[top]:.2f}", fontsize=7,
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


def _default_regions(alignment: Alignment, matrix: np.ndarray, top: int) -> list[int]:
    """The regions worth showing: by the head's per-region relevance, else by the attention they receive."""
    if alignment.region_relevance is not None and np.size(alignment.region_relevance) == matrix.shape[1]:
        strength = np.asarray(alignment.region_relevance, dtype=np.float64)
    else:
        strength = matrix.sum(axis=0)
    return [int(k) for k in np.argsort(-strength, kind="stable")[: max(1, top)]]


def region_word_figure(image: np.ndarray, alignment: Alignment, regions: list[int] | None = None, top: int = 8,
                       show_specials: bool = False) -> Figure:
    """The image-to-text view: per region, its crop beside the sentence shaded by its attention over the words.

    image: (H, W, 3) uint8. regions: indices into the alignment's regions; by default the ``top`` regions by the
    head's per-region relevance (SCAN i2t's R, CAAN's weights), else by total attention received. Each word's shade is the attention weight between
    the region and the word on one fixed 0-1 scale for the whole figure (the colour bar at the bottom), so a weak
    region's words stay pale; the weight is printed under the word.
    """
    image = _check_image(image)
    boxes = _display_boxes(image, alignment)
    matrix = _word_matrix(alignment)
    chosen = _chosen(regions, matrix.shape[1], _default_regions(alignment, matrix, top), "region")
    shown = _chosen_words(alignment, None, show_specials)
    names = [_word_name(alignment, i) for i in shown]

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


def relevance_bar(alignment: Alignment) -> Figure:
    """Bar charts of what the head scores per word and/or per region (SCAN's R, CHAN's best-region cosine,
    CAAN's weights), one chart each, titled with the head's labels; specials grey, ``<unk>`` words orange."""
    charts = []
    if alignment.word_relevance is not None:
        values = np.asarray(alignment.word_relevance, dtype=np.float64).reshape(-1)
        if len(values) != len(alignment.words):
            raise ScanVizError(f"{len(values)} relevance values for {len(alignment.words)} words: "
                               "rebuild the alignment")
        colours = ["#aaaaaa" if _is_special(w) else "#ff7f0e" if i < len(alignment.unknown) and alignment.unknown[i]
                   else "#1f77b4" for i, w in enumerate(alignment.words)]
        charts.append((values, [_word_name(alignment, i) for i in range(len(values))], colours,
                       alignment.word_relevance_label, "word"))
    if alignment.region_relevance is not None:
        values = np.asarray(alignment.region_relevance, dtype=np.float64).reshape(-1)
        charts.append((values, [f"{k}: {_region_label(alignment, k)}" for k in range(len(values))],
                       ["#1f77b4"] * len(values), alignment.region_relevance_label, "region"))
    if not charts:
        raise ScanVizError(f"the {alignment.head} alignment has no per-word or per-region relevance to chart")
    width = max(4.0, 0.45 * max(len(c[0]) for c in charts) + 1.5)
    figure = _new_figure(width, 3.2 * len(charts), layout="constrained")
    for slot, (values, names, colours, label, what) in enumerate(charts):
        axes = figure.add_subplot(len(charts), 1, slot + 1)
        axes.bar(np.arange(len(values)), values, color=colours)
        many = len(values) > 6
        axes.set_xticks(np.arange(len(values)), names, rotation=45 if many else 0, ha="right" if many else "center",
                        fontsize=8)
        axes.axhline(0, color="black", linewidth=0.6)
        axes.set_ylabel(label)
        axes.set_title(f"{alignment.head}: {label} per {what} (score {alignment.score:.3f})", fontsize=10)
    return figure


def ablation_bar(labels: Sequence[str], deltas: Sequence[float] | np.ndarray,
                 title: str = "score change when removed") -> Figure:
    """Horizontal bars of the score change per removed word or region (drops red, gains green)."""
    values = np.asarray(deltas, dtype=np.float64).reshape(-1)
    if len(labels) != len(values) or len(values) == 0:
        raise ScanVizError(f"got {len(labels)} labels and {len(values)} score changes: pass one change per label")
    figure = _new_figure(6.0, 0.3 * len(values) + 1.2, layout="constrained")
    axes = figure.add_subplot()
    positions = np.arange(len(values))
    axes.barh(positions, values, color=np.where(values < 0, "#d62728", "#2ca02c"))
    axes.set_yticks(positions, [str(label) for label in labels], fontsize=8)
    axes.invert_yaxis()  # first label on top, in reading order
    axes.axvline(0, color="black", linewidth=0.6)
    axes.set_xlabel("\u0394 score")
    axes.set_title(title, fontsize=10)
    return figure


# ----------------------------------------------------------------------------- interactive (plotly)


#: Name of the interactive figure's trace that only carries the colour bar.
COLOUR_BAR = "colour bar"
#: Fill opacity of a region box at attention weight 0 and 1 (interactive view); the colour bar uses the same.
_FILL_ALPHA = (0.01, 0.6)


def _fill(weight: float) -> str:
    r, g, b = _HIGHLIGHT_RGB
    low, high = _FILL_ALPHA
    return f"rgba({r},{g},{b},{low + (high - low) * weight:.3f})"


def _region_style(weights: np.ndarray) -> dict[str, list]:
    """Per-region fill, outline colour and width for one word's weights (n_regions,), on the fixed 0-1 scale.

    The weights are not rescaled to the word's largest one: a word spread evenly over 36 regions (0.03 each)
    leaves the image almost untouched instead of painting every box as if it were the strongest.
    """
    r, g, b = _HIGHLIGHT_RGB
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
    boxes = _display_boxes(image, alignment)
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
        label = html.escape(_region_label(alignment, region))
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
    boxes = _display_boxes(image, alignment)
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
    "Peak",
    "ablation_bar",
    "attention_map",
    "attention_peak",
    "draw_boxes",
    "figure_to_png",
    "figure_to_svg",
    "overview_image",
    "panel_image",
    "plotly_alignment",
    "region_caption",
    "region_word_figure",
    "relevance_bar",
    "word_caption",
    "word_panels",
]
