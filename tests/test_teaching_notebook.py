"""examples/teaching.ipynb runs top to bottom (its code cells executed in order, in one namespace), and a step and
a walk display themselves as offline HTML."""
import json
import os
from pathlib import Path

import numpy as np

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "teaching.ipynb"


def test_the_teaching_notebook_runs(monkeypatch):
    monkeypatch.chdir(NOTEBOOK.parent)
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    namespace: dict = {}
    for cell in cells:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{NOTEBOOK.name}", "exec"), namespace)  # noqa: S102
    walk = namespace["walk"]
    assert abs(walk.score - namespace["score"]) < 1e-9
    assert np.isclose(namespace["shares"].sum(), walk.score)
    html = walk._repr_html_() + namespace["chan"].steps[1]._repr_html_()
    assert "<script" not in html and "http" not in html and html.count("<table>") >= len(walk.steps)
    assert os.path.basename(NOTEBOOK) == "teaching.ipynb"
