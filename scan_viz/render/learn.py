"""What the Learn page draws from a :class:`~scan_viz.heads.walk.Walk`, as pure functions (no Streamlit, no model).

* :func:`cell_formula`: one cell of a step explained with its own numbers substituted (a softmax shows its
  largest exp terms and "..."), the text of a heatmap's hover;
* :func:`step_figure`: a step's main tensor as a plotly figure (a words x regions heatmap with the numbers in
  the cells and each region's thumbnail along its axis, bars for a per-item vector, one number for a scalar);
* :func:`region_thumbnails`: small crops of the regions' boxes as JPEG data URIs (encoded once, nothing fetched);
* :func:`boxes_figure`: the image with the regions' boxes, one word's row of a step painting box opacity;
* :func:`word_shares`: each word's (or region's) share of the pooled score;
* :func:`handout_html`: every step of a pair as one self-contained HTML file (plotly and the formulas inside).

Words and region labels come from visitors and files: every one is HTML-escaped where a figure is built.
"""
from __future__ import annotations

import base64
import html
import io
import math

import numpy as np

from scan_viz.heads.stepspec import REGIONS, WORDS
from scan_viz.heads.walk import Step, Walk, array_html, vector_summary

#: How many terms of a softmax's denominator a hover lists before "...".
SOFTMAX_TERMS = 4
#: Columns up to which a heatmap writes its numbers in the cells.
MAX_WRITTEN = 16
LEAKY_SLOPE = 0.1


def _fmt(value: float) -> str:
    return f"{value:.4f}"


def _exp_term(scale: float, x: float) -> str:
    return f"exp({scale:g}\u00d7{x:.3f})"


def main_matrix_step(walk: Walk, upto: int | None = None) -> Step | None:
    """The last words x regions step at or before index ``upto`` (default: the attention-like one, else the
    cosines): the row a chosen word paints on the image."""
    candidates = [s for s in walk.steps[:None if upto is None else upto + 1] if s.axes == (WORDS, REGIONS)]
    if not candidates:
        candidates = [s for s in walk.steps if s.axes == (WORDS, REGIONS)]
    return candidates[-1] if candidates else None


def label_of(walk: Walk, axis: str, index: int) -> str:
    """A word or region as a hover names it (escaped)."""
    names = walk.words if axis == WORDS else walk.region_labels if axis == REGIONS else None
    return html.escape(names[index]) if names is not None and index < len(names) else str(index)


def cell_formula(walk: Walk, step: Step, row: int, col: int | None = None) -> str:
    """The formula of one cell of ``step``'s main tensor with the code's numbers filled in (HTML, escaped).

    row, col: indices along the step's axes (col None for a per-item vector)."""
    spec = step.spec
    value = step.value
    if value.ndim == 0:
        return f"{html.escape(step.name)} = {_fmt(float(value))}"
    axes = step.axes
    where = label_of(walk, axes[0], row) + ("" if col is None else f", {label_of(walk, axes[1], col)}")
    v = float(value[row] if col is None else value[row, col])
    head = f"{html.escape(step.name)}[{where}]"
    if col is None:
        return f"{head} = {_fmt(v)}"
    word, region = row, col
    if spec.cell == "cosine":
        e, r = walk.words_emb[word], walk.regions[region]
        return (f"{head} = v\u00b7e / (|v| |e|) = {float(r @ e):.4f} / ({np.linalg.norm(r):.3f} \u00d7 "
                f"{np.linalg.norm(e):.3f}) = {_fmt(v)}")
    if spec.cell == "normalise":
        s = float(walk.steps[0].value[word, region])
        norm = walk.settings.get("raw_feature_norm", "")
        numerator = (s if s >= 0 else LEAKY_SLOPE * s) if norm.startswith("clipped") else (
            math.exp(s) if norm == "softmax" else s)
        over = "words of region " + label_of(walk, REGIONS, region) if spec.over == WORDS else (
            "regions for word " + label_of(walk, WORDS, word))
        if norm in ("clipped", "no_norm") or v == 0:
            return f"{head} = {_fmt(v)} (s = {_fmt(s)}; {html.escape(norm)})"
        return (f"{head} = {'LReLU' if norm.startswith('clipped') else ('exp' if norm == 'softmax' else '')}"
                f"({_fmt(s)}) / {numerator / v:.4f} = {numerator:.4f} / {numerator / v:.4f} = {_fmt(v)}"
                f"<br>(normalised over the {over})")
    if spec.cell == "softmax" and spec.source:
        source = next(s.tensors[spec.source] for s in walk.steps if spec.source in s.tensors)
        lam = float({**walk.constants, **walk.settings}[spec.scale])
        line = source[word, :] if spec.over == REGIONS else source[:, region]
        own = region if spec.over == REGIONS else word
        other_axis = REGIONS if spec.over == REGIONS else WORDS
        order = [i for i in np.argsort(-line, kind="stable") if i != own][:SOFTMAX_TERMS - 1]
        terms = [_exp_term(lam, float(line[own]))] + [_exp_term(lam, float(line[i])) for i in order]
        more = " + ..." if len(line) > len(terms) else ""
        named = ", ".join(label_of(walk, other_axis, int(i)) for i in [own, *order])
        return (f"{head} = {terms[0]} / ({' + '.join(terms)}{more}) = {_fmt(v)}"
                f"<br>(softmax over the {spec.over}; largest terms: {named})")
    if spec.cell == "argmax":
        s_row = walk.steps[0].value[word]
        best = int(np.argmax(s_row))
        return (f"s[{where}] = {_fmt(float(s_row[region]))}; c = max over the regions = s at "
                f"{label_of(walk, REGIONS, best)} = {_fmt(float(s_row[best]))}")
    return f"{head} = {_fmt(v)}"


def hover_grid(walk: Walk, step: Step) -> list[list[str]]:
    """``cell_formula`` for every cell of a 2-D step (rows x cols)."""
    rows, cols = step.value.shape
    return [[cell_formula(walk, step, r, c) for c in range(cols)] for r in range(rows)]


def _labels(walk: Walk, axis: str, count: int) -> list[str]:
    return [label_of(walk, axis, i) for i in range(count)]


#: Thumbnails' longest side in pixels, and how many pixels of top margin they take.
THUMB_PX = 28


def region_thumbnails(image: np.ndarray, boxes: np.ndarray | None, size: int = THUMB_PX) -> list[str]:
    """Each box's crop of ``image`` shrunk to at most ``size`` px on its longest side, as a JPEG data URI.

    image: (H, W, 3) uint8 RGB (or (H, W) grey); boxes: (n, 4) x1, y1, x2, y2 in the image's pixels (clipped to
    it; an empty box becomes one pixel). Encoded once here: a figure carries the strings, nothing is fetched."""
    from PIL import Image

    from scan_viz.regions.images import image_to_jpeg_bytes

    if boxes is None:
        return []
    pixels = np.asarray(image)
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = pixels[..., :3]
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = pixels.shape[:2]
    uris = []
    for x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float64):
        left = int(min(max(math.floor(x1), 0), width - 1))
        top = int(min(max(math.floor(y1), 0), height - 1))
        right = int(min(max(math.ceil(x2), left + 1), width))
        bottom = int(min(max(math.ceil(y2), top + 1), height))
        crop = Image.fromarray(pixels[top:bottom, left:right])
        crop.thumbnail((size, size))
        uris.append("data:image/jpeg;base64," + base64.b64encode(
            image_to_jpeg_bytes(np.asarray(crop), quality=85)).decode("ascii"))
    return uris


def _place_thumbnails(figure, thumbnails: list[str], count: int, plot_height: float) -> None:
    """One layout image per region column (at most ``count``), centred on the column above the heatmap."""
    sizey = THUMB_PX / max(plot_height, 1.0)
    figure.update_layout(images=[
        {"source": uri, "xref": "x", "yref": "paper", "x": i, "y": 1.0 + 2 / max(plot_height, 1.0),
         "sizex": 0.9, "sizey": sizey, "xanchor": "center", "yanchor": "bottom", "sizing": "contain",
         "layer": "above"}
        for i, uri in enumerate(thumbnails[:count])])


def step_figure(walk: Walk, step: Step, tensor: str | None = None, large: bool = False,
                thumbnails: list[str] | None = None, clickable: bool = False):
    """One tensor of a step as a plotly figure: a heatmap (cell numbers written in, hover = :func:`cell_formula`
    for the main tensor), bars for a vector, a single number for a scalar.

    thumbnails: :func:`region_thumbnails` of the walk's boxes; a heatmap with a regions axis shows each one
    above its column (the column's label stays on the axis and in the hover). clickable: a heatmap's cells
    are points plotly can select (its hover then comes from them), for a page that chooses a row on a click."""
    import plotly.graph_objects as go

    name = tensor or step.name
    axes = dict(step.spec.tensors)[name]
    value = np.asarray(step.tensors[name], dtype=np.float64)
    font = 18 if large else 12
    if value.ndim == 2:
        rows, cols = _labels(walk, axes[0], value.shape[0]), _labels(walk, axes[1], value.shape[1])
        # duplicate labels (two "bird" regions) would merge on a category axis: number them
        cols = [f"{i}: {c}" for i, c in enumerate(cols)] if axes[1] == REGIONS else cols
        rows = [f"{i}: {r}" for i, r in enumerate(rows)]
        hover = hover_grid(walk, step) if name == step.name else [
            [f"{html.escape(name)}[{rows[r]}, {cols[c]}] = {value[r, c]:.4f}" for c in range(value.shape[1])]
            for r in range(value.shape[0])]
        # numbers in the cells while they fit; wider matrices keep them in the hover and the table below
        text = {"texttemplate": "%{z:.2f}", "textfont": {"size": font - 3}} if value.shape[1] <= MAX_WRITTEN else {}
        if not clickable:
            figure = go.Figure(go.Heatmap(z=value, x=cols, y=rows, customdata=hover, colorscale="Blues",
                                          hovertemplate="%{customdata}<extra></extra>", **text))
        else:
            # plotly selects no heatmap cell on a click: an invisible point at each cell's centre carries the hover
            # and the click (a selected point's y is its row's label "i: word")
            figure = go.Figure(go.Heatmap(z=value, x=cols, y=rows, colorscale="Blues", hoverinfo="skip", **text))
            grid_rows, grid_cols = np.meshgrid(np.arange(len(rows)), np.arange(len(cols)), indexing="ij")
            figure.add_trace(go.Scatter(
                x=[cols[c] for c in grid_cols.ravel()], y=[rows[r] for r in grid_rows.ravel()], mode="markers",
                marker={"symbol": "square", "size": 4, "opacity": 0}, showlegend=False, name="cells",
                customdata=[hover[r][c] for r, c in zip(grid_rows.ravel(), grid_cols.ravel())],
                hovertemplate="%{customdata}<extra></extra>", unselected={"marker": {"opacity": 0}},
                selected={"marker": {"opacity": 0}}))
        figure.update_yaxes(autorange="reversed")
        if clickable:  # the cells fill the plot exactly, as without the markers (whose size would pad the axes)
            figure.update_xaxes(range=[-0.5, len(cols) - 0.5])
            figure.update_yaxes(range=[len(rows) - 0.5, -0.5], autorange=False)
        shown = thumbnails[:len(cols)] if thumbnails and axes[1] == REGIONS else []
        top = 30 + (THUMB_PX + 6 if shown else 0)
        height = max(260, 28 * len(rows) + 140) + (top - 30)
        figure.update_layout(height=height, margin={"l": 10, "r": 10, "t": top, "b": 10},
                             font={"size": font}, xaxis={"tickangle": -45})
        if shown:
            # the plot area's height is not known before plotly draws the axis labels: the figure's height less
            # the margins and the rotated region labels (about 100 px) is close enough for 28 px images
            _place_thumbnails(figure, shown, len(cols), height - top - 10 - 100)
        return figure
    if value.ndim == 1:
        labels = [f"{i}: {x}" for i, x in enumerate(_labels(walk, axes[0], len(value)))]
        hover = [cell_formula(walk, step, i) if name == step.name else f"{html.escape(name)}[{labels[i]}] = "
                 f"{value[i]:.4f}" for i in range(len(value))]
        figure = go.Figure(go.Bar(x=labels, y=value, customdata=hover, hovertemplate="%{customdata}<extra></extra>",
                                  text=[f"{v:.3f}" for v in value], textposition="outside"))
        figure.update_layout(height=300, margin={"l": 10, "r": 10, "t": 30, "b": 10}, font={"size": font})
        return figure
    return None


def row_weights(walk: Walk, step: Step, word: int) -> np.ndarray:
    """The weights (n_regions,) one word paints on the image at ``step``: its row of the step's words x regions
    tensor (or of the latest one before it), clipped to 0..1."""
    source = step if step.axes == (WORDS, REGIONS) else main_matrix_step(walk, walk.steps.index(step))
    if source is None:
        return np.zeros(len(walk.region_labels))
    return np.clip(np.nan_to_num(source.value[word]), 0.0, 1.0)


def boxes_figure(image: np.ndarray, walk: Walk, weights: np.ndarray, title: str = ""):
    """The image with every region's box; box opacity (fill and outline) = its weight in 0..1."""
    import plotly.graph_objects as go

    from scan_viz.regions.images import image_to_png_bytes

    height, width = image.shape[:2]
    uri = "data:image/png;base64," + base64.b64encode(image_to_png_bytes(image)).decode("ascii")
    figure = go.Figure(go.Image(source=uri, hoverinfo="skip"))
    boxes = walk.boxes if walk.boxes is not None else np.zeros((0, 4))
    # layout shapes, not one trace per box: a figure of 36 traces takes ~0.2 s to build, shapes a few ms
    shapes = []
    for region, (x1, y1, x2, y2) in enumerate(boxes):
        w = float(weights[region]) if region < len(weights) else 0.0
        shapes.append({"type": "rect", "x0": float(x1), "y0": float(y1), "x1": float(x2), "y1": float(y2),
                       "fillcolor": f"rgba(255,140,0,{0.55 * w:.3f})",
                       "line": {"color": f"rgba(255,140,0,{0.15 + 0.85 * w:.3f})", "width": 1 + 3 * w}})
    if len(boxes):  # one invisible point per box centre carries its name and weight on hover
        centres = np.asarray(boxes, dtype=np.float64)
        figure.add_trace(go.Scatter(
            x=(centres[:, 0] + centres[:, 2]) / 2, y=(centres[:, 1] + centres[:, 3]) / 2, mode="markers",
            marker={"size": 14, "opacity": 0}, showlegend=False, hoverinfo="text",
            text=[f"{r}: {label_of(walk, REGIONS, r)} weight {float(weights[r]):.3f}" for r in range(len(boxes))]))
    figure.update_layout(shapes=shapes, title={"text": html.escape(title)}, margin={"l": 0, "r": 0, "t": 40, "b": 0},
                         xaxis={"range": [0, width], "visible": False},
                         yaxis={"range": [height, 0], "visible": False, "scaleanchor": "x"},
                         height=int(60 + 420 * height / width))
    return figure


def word_shares(walk: Walk) -> tuple[str, np.ndarray] | None:
    """Each pooled item's share of the score, summing to the score: (axis, shares), or None for a head whose
    score is not a pooling of per-item numbers (CAAN-style's cosine).

    LogSumExp: S x softmax(lambda R) (each item's weight in the pool); Mean: R / n; Sum: R; Max: S for the best.
    Co-attention: each word's beta_w o.h_w, with the output bias c shared equally between the words.
    """
    last = walk.steps[-2] if len(walk.steps) > 1 else None
    if last is None or last.value.ndim != 1 or walk.head == "caan":
        return None
    values, axis, score = last.value, last.axes[0], walk.score
    if walk.head == "coattention":
        return axis, values + (score - values.sum()) / len(values)
    if "agg_func" in walk.settings:
        agg, lam = walk.settings["agg_func"], float(walk.settings["lambda_lse"])
    else:
        agg, lam = walk.settings.get("chan_agg", "Mean"), 1.0 / float(walk.settings.get("beta", 1.0))
    if agg == "LogSumExp":
        z = lam * values
        weights = np.exp(z - z.max())
        return axis, score * weights / weights.sum()
    if agg == "Mean":
        return axis, values / len(values)
    if agg == "Sum":
        return axis, values.copy()
    shares = np.zeros_like(values)
    shares[int(np.argmax(values))] = score
    return axis, shares


def best_false_caption(index, image_id: str, head, depth: int = 200) -> tuple[str, float] | None:
    """The gallery caption that scores highest with the image among those the truth check says are false of it
    (``Gallery.truth``; without claims: the best caption that is not one of the image's own): (text, score).

    index: a :class:`~scan_viz.pipeline.GalleryIndex`; head: a name or a built head; depth: how many of the
    best-scoring captions are looked through."""
    gallery = index.gallery
    i = gallery.index_of(image_id)
    truth = gallery.truth
    for caption, score in index.search_captions(image_id, k=depth, head=head):
        false = (not truth[caption, i]) if truth is not None else int(gallery.caption_image[caption]) != i
        if false:
            return gallery.captions[caption], score
    return None


def latex_svg(latex: str, size: int = 15) -> str:
    """A formula as inline SVG, typeset offline by matplotlib's mathtext (no script, no request)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(0.01, 0.01))
    # mathtext knows no \operatorname, \big or \lVert: spell them in what it does know
    text = (latex.replace(r"\operatorname", r"\mathrm").replace(r"\big(", "(").replace(r"\big)", ")")
            .replace(r"\lVert", "|").replace(r"\rVert", "|").replace(r"\quad", r"\ \ \ ").replace(r"\top", "T"))
    figure.text(0, 0, f"${text}$", fontsize=size)
    out = io.StringIO()
    try:
        figure.savefig(out, format="svg", bbox_inches="tight", pad_inches=0.05, transparent=True)
    except ValueError:  # a formula mathtext cannot parse: its source, as text
        return f"<pre>{html.escape(latex)}</pre>"
    svg = out.getvalue()
    return svg[svg.index("<svg"):]


def handout_html(walk: Walk, image: np.ndarray | None, sentence: str, title: str = "") -> str:
    """Every step of a pair as ONE self-contained HTML page: formulas as SVG, numbers as tables, figures as
    plotly with its JavaScript embedded (include_plotlyjs=True), nothing fetched when opened from a file."""
    import plotly.io as pio

    parts = [f"<h1>{html.escape(title or 'SCAN step by step')}</h1>",
             f"<p>Sentence: <b>{html.escape(sentence)}</b> &middot; head {html.escape(walk.head_title)} &middot; "
             + ", ".join(f"{html.escape(str(k))} = {html.escape(str(v))}"
                         for k, v in {**walk.constants, **walk.settings}.items())
             + f" &middot; score {walk.score:.6f}</p>",
             "<h2>Contents</h2><ol>" + "".join(f"<li><a href='#step{i + 1}'>{html.escape(s.title)}</a></li>"
                                              for i, s in enumerate(walk.steps)) + "</ol>"]
    plotly_included = False
    if image is not None and walk.boxes is not None:
        attention = main_matrix_step(walk)
        first = 1 if len(walk.words) > 2 else 0
        if attention is not None:
            figure = boxes_figure(image, walk, row_weights(walk, attention, first),
                                  f"{walk.words[first]}: {attention.title}")
            parts.append(pio.to_html(figure, include_plotlyjs=True, full_html=False))
            plotly_included = True
    for i, step in enumerate(walk.steps):
        parts.append(f"<h2 id='step{i + 1}'>{i + 1}. {html.escape(step.title)}</h2>")
        parts.append(f"<div class='formula'>{latex_svg(step.spec.latex)}</div>")
        parts.append(f"<p>{html.escape(step.spec.meaning)}</p>")
        if step.spec.note:
            parts.append(f"<p class='note'>Official code: {html.escape(step.spec.note)}</p>")
        figure = step_figure(walk, step)
        if figure is not None:
            parts.append(pio.to_html(figure, include_plotlyjs=not plotly_included, full_html=False))
            plotly_included = True
        for name, axes in step.spec.tensors:
            parts.append(f"<h4>{html.escape(name)} ({html.escape(' x '.join(axes) or 'scalar')})</h4>")
            parts.append(array_html(step.tensors[name], axes, walk.words, walk.region_labels))
    parts.append("<h2>Embeddings</h2><p>Each region and word vector by its norm and largest dimensions:</p><ul>"
                 + "".join(f"<li>{html.escape(w)}: {html.escape(vector_summary(e))}</li>"
                           for w, e in zip(walk.words, walk.words_emb)) + "</ul>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}table{border-collapse:collapse;"
             "font-size:12px}td,th{border:1px solid #ccc;padding:2px 4px;text-align:right}.note{color:#7a4b00}")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>"
            f"{html.escape(title or 'SCAN step by step')}</title><style>{style}</style></head><body>"
            + "".join(parts) + "</body></html>")
