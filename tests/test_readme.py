"""The README's Python example runs as written, on the bundled model and gallery."""
import re
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def test_readme_python_example_runs(monkeypatch):
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "the README has no Python example"
    monkeypatch.chdir(REPO)
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the project's own README
        if "al" in namespace:
            al = namespace["al"]
            assert len(al.word_relevance) == len(al.words) and np.isfinite(al.score)
            assert namespace["sims"].shape == (4, 2)
