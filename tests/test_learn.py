"""scan_viz.render.learn, what the Learn page draws: hover formulas carry the cell's own numbers, shares add up to the
score, figures and the handout escape visitor text and fetch nothing; the README's teaching links show what they
say they show."""
import dataclasses
import re
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from scan_viz import load_model
from scan_viz.app.params import parse_explore_query
from scan_viz.gallery import load_gallery
from scan_viz.heads.scan import AGG_FUNCS
from scan_viz.heads.walk import steps
from scan_viz.pipeline import DEFAULT_GALLERY, gallery_regions
from scan_viz.render import learn

README = Path(__file__).resolve().parents[1] / "README.md"
NUMBER = re.compile(r"-?\d+\.\d+")


@pytest.fixture(scope="module")
def model():
    return load_model("scan-emoji-t2i")


@pytest.fixture(scope="module")
def gallery():
    return load_gallery(DEFAULT_GALLERY)


@pytest.fixture(scope="module")
def walk(model, gallery):
    return steps(model, gallery_regions(gallery, gallery.ids[0]), gallery.captions[0], head="scan_t2i")


def test_hover_formulas_substitute_the_cells_numbers(walk):
    cos, s_bar, alpha = walk.step("cosines"), walk.step("normalised"), walk.step("attention")
    word, region = 3, 2
    text = learn.cell_formula(walk, cos, word, region)
    numbers = [float(x) for x in NUMBER.findall(text)]
    assert numbers[0] == pytest.approx(walk.regions[region] @ walk.words_emb[word], abs=1e-4)
    assert numbers[-1] == pytest.approx(cos.value[word, region], abs=1e-4)
    text = learn.cell_formula(walk, s_bar, word, region)
    assert "over the words of region" in text
    assert float(NUMBER.findall(text)[-1]) == pytest.approx(s_bar.value[word, region], abs=1e-4)
    text = learn.cell_formula(walk, alpha, word, region)
    lam = walk.settings["lambda_softmax"]
    terms = re.findall(r"exp\(([\d.]+)\u00d7(-?[\d.]+)\)", text)
    assert float(terms[0][0]) == lam and float(terms[0][1]) == pytest.approx(s_bar.value[word, region], abs=1e-3)
    # the listed terms are the row's largest after the cell's own, then "..."
    others = sorted(s_bar.value[word], reverse=True)
    listed = [float(x) for _, x in terms[2:]]  # terms[0] the numerator, terms[1] the same term below
    assert listed == pytest.approx([x for x in others if x != s_bar.value[word, region]][:len(listed)], abs=1e-3)
    assert "+ ...)" in text and len(terms) == 1 + learn.SOFTMAX_TERMS
    assert float(text.split(") = ")[-1].split("<br>")[0]) == pytest.approx(alpha.value[word, region], abs=1e-4)
    # the figure's hover is the same text
    figure = learn.step_figure(walk, alpha)
    assert figure.data[0].customdata[word][region] == text


@pytest.mark.parametrize("agg", AGG_FUNCS)
def test_shares_add_up_to_the_score(model, gallery, agg):
    walk = steps(model, gallery_regions(gallery, gallery.ids[3]), gallery.captions[17], head="scan_t2i",
                 agg_func=agg)
    axis, shares = learn.word_shares(walk)
    assert axis == "words" and shares.shape == (len(walk.words),)
    assert shares.sum() == pytest.approx(walk.score, abs=1e-9)
    if agg == "Mean":
        np.testing.assert_allclose(shares, walk.step("relevance").value / len(walk.words))


@pytest.mark.parametrize("chan_agg", ["LogSumExp", "Mean"])
def test_chan_shares_and_caan_has_none(model, gallery, chan_agg):
    walk = steps(model, gallery_regions(gallery, gallery.ids[3]), gallery.captions[17], head="chan",
                 chan_agg=chan_agg)
    assert learn.word_shares(walk)[1].sum() == pytest.approx(walk.score, abs=1e-9)
    caan = steps(model, gallery_regions(gallery, gallery.ids[3]), gallery.captions[17], head="caan")
    assert learn.word_shares(caan) is None


def test_figures_and_the_handout_escape_visitor_text_and_fetch_nothing(walk, gallery):
    hostile = dataclasses.replace(walk, region_labels=["<img src=x onerror=alert(1)>"] * len(walk.region_labels))
    figure = learn.step_figure(hostile, hostile.step("attention"))
    assert all("<img" not in x for x in figure.data[0].x)
    assert "<img" not in figure.data[0].customdata[1][0]
    sentence = "<script>alert(1)</script> [x](https://evil.example)"
    page = learn.handout_html(hostile, gallery.load_image(gallery.ids[0]), sentence)
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert "<img src=x" not in page
    markup = re.sub(r"<script.*?</script>", "", page, flags=re.S)  # plotly.js's own strings aside
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", markup)  # nothing to fetch
    assert "<script src" not in page
    assert page.count("<div class='formula'><svg") == len(walk.steps)  # every formula typeset offline
    assert page.count("Plotly.newPlot") >= 1 and page.count("* plotly.js v") == 1  # embedded once


def teaching_links() -> list[dict]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Teacher's guide", 1)[1].split("\n## ", 1)[0]
    links = re.findall(r"\((http://localhost:8501/learn\?[^)]+)\)", section)
    return [{k: v[-1] for k, v in parse_qs(urlparse(link).query).items()} for link in links]


def test_the_readme_teaching_links_show_what_they_say(model, gallery):
    from scan_viz.evaluation.truth import caption_holds
    from scan_viz.render import attention_peak

    clean, count, flat = teaching_links()
    for query in (clean, count, flat):
        params, notes = parse_explore_query(query)
        assert notes == [] and params.image in gallery.ids and params.step is not None
    i = gallery.index_of(clean["image"])
    assert clean["q"] in gallery.captions_of(clean["image"])  # its own caption
    verdict = caption_holds(gallery.claims_of(count["q"]), gallery.scenes[gallery.index_of(count["image"])])
    assert [r.split(":")[0] for r in verdict.reasons] == ["count"]  # wrong only in the count
    walk = steps(model, gallery_regions(gallery, flat["image"]), flat["q"], head="scan_t2i")
    row = walk.step("attention").value[walk.words.index(flat["word"])]
    assert attention_peak(row).flat
    assert i >= 0


def test_the_heatmap_shows_one_thumbnail_per_region_at_its_column(walk, gallery):
    image = gallery.load_image(gallery.ids[0])
    thumbs = learn.region_thumbnails(image, walk.boxes)
    assert len(thumbs) == len(walk.boxes) == len(walk.region_labels)
    step = walk.step("attention")
    figure = learn.step_figure(walk, step, thumbnails=thumbs)
    images = figure.layout.images
    assert len(images) == step.value.shape[1]
    columns = list(figure.data[0].x)
    for region, placed in enumerate(images):
        assert placed.xref == "x" and placed.x == region and columns[region].startswith(f"{region}: ")
        assert placed.yref == "paper" and placed.y >= 1.0 and placed.sizey > 0
        assert placed.source == thumbs[region] and placed.source.startswith("data:image/jpeg;base64,")
        assert "http" not in placed.source and "//" not in placed.source.split(",", 1)[0]
    # the labels stay on the axis and in the hover
    assert learn.label_of(walk, "regions", 0) in figure.data[0].customdata[0][0]
    # each thumbnail is small: at most THUMB_PX on its longest side
    import base64
    import io

    from PIL import Image

    for uri in thumbs:
        size = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).size
        assert max(size) <= learn.THUMB_PX
    # no boxes, no thumbnails; a vector step draws none
    assert learn.region_thumbnails(image, None) == []
    assert not learn.step_figure(walk, step).layout.images


def test_a_clickable_heatmap_has_a_point_per_cell_named_by_its_word_row(walk):
    step = walk.step("attention")
    rows, cols = step.value.shape
    figure = learn.step_figure(walk, step, clickable=True)
    heat, cells = figure.data
    assert heat.hoverinfo == "skip" and len(cells.x) == rows * cols
    # each point sits on its cell and carries that cell's formula; its y names the word row as "i: word"
    assert [int(y.split(":", 1)[0]) for y in cells.y] == [r for r in range(rows) for _ in range(cols)]
    assert cells.x[cols + 2] == heat.x[2] and cells.customdata[cols + 2] == learn.cell_formula(walk, step, 1, 2)
    assert list(figure.layout.xaxis.range) == [-0.5, cols - 0.5]
