"""Everything 20 app links put on screen, as JSON: the "no behaviour change" check of a refactor.

    python tools/app_snapshot.py OUT.json        # run before and after, then diff the two files

Each link is opened with ``streamlit.testing.v1.AppTest`` on the bundled model and gallery (the app's defaults);
the text of every markdown, caption, code, text, metric, table and chart title on the page is recorded.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
PAGES = {"Explore": None, "Retrieve": "scan_viz/app/retrieve.py", "Evaluate": "scan_viz/app/evaluate.py",
         "Model": "scan_viz/app/models.py", "Learn": "scan_viz/app/learn.py"}
LINKS = [
    ("Explore", {"image": "test_000000", "q": "at the top there are two blue birds"}),
    ("Explore", {"image": "test_000001", "q": "a red car on the road", "word": "car"}),
    ("Explore", {"image": "test_000002", "q": "two dogs on the grass", "head": "scan_i2t"}),
    ("Explore", {"image": "test_000003", "q": "a yellow taxi next to a tree", "head": "chan"}),
    ("Explore", {"image": "test_000004", "q": "a big elephant under the sky", "head": "caan"}),
    ("Explore", {"image": "test_000005", "q": "a small cat", "model": "scan-emoji-i2t"}),
    ("Explore", {"image": "test_000006", "q": "three birds over the water", "model": "chan-emoji"}),
    ("Explore", {"image": "test_000007", "q": "a pizza on the sand", "model": "caan-emoji"}),
    ("Explore", {"image": "test_000008", "q": "an orange butterfly", "lsm": "4"}),
    ("Explore", {"image": "test_000009", "q": "a blue bird and a grey elephant", "compare": "chan,caan"}),
    ("Explore", {"image": "test_000010", "q": "a car", "dir": "i2t"}),
    ("Explore", {"image": "test_000011", "q": "snow on the road", "head": "coattention"}),
    ("Retrieve", {"search": "text", "q": "two blue birds", "k": "5"}),
    ("Retrieve", {"search": "text", "q": "a red car on the road", "k": "10", "head": "chan"}),
    ("Retrieve", {"search": "image", "image": "test_000000", "k": "5"}),
    ("Retrieve", {"search": "image", "image": "test_000003", "k": "5", "model": "scan-emoji-i2t"}),
    ("Retrieve", {"search": "text", "q": "a cat", "k": "5", "model": "caan-emoji"}),
    ("Learn", {"image": "test_000000", "q": "two blue birds", "step": "3"}),
    ("Learn", {"image": "test_000002", "q": "a dog on the grass", "head": "chan", "step": "2"}),
    ("Model", {}),
]


def texts(at: AppTest) -> list[str]:
    out: list[str] = []
    for kind in ("markdown", "caption", "code", "text", "metric", "error", "warning", "info", "success"):
        for el in at.get(kind):
            value = getattr(el, "value", None)
            out.append(f"{kind}: {value}")
    for el in at.get("dataframe") + at.get("table"):
        try:
            out.append("table: " + el.value.to_csv())
        except Exception:  # noqa: BLE001 - a snapshot, not a check
            out.append("table: ?")
    for el in at.image:
        out.extend(f"image: {c}" for c in getattr(el, "captions", []) or [])
    for el in at.get("plotly_chart"):
        spec = json.loads(el.proto.spec)
        out.append("plot: " + json.dumps(spec.get("data"), sort_keys=True)[:20000])
    return out


def main() -> None:
    torch.set_num_threads(1)
    snapshot = []
    for page, query in LINKS:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
        for key, value in query.items():
            at.query_params[key] = value
        if PAGES[page]:
            at.switch_page(PAGES[page])
        at.run()
        snapshot.append({"page": page, "query": query, "exception": [str(e.value) for e in at.exception],
                         "text": texts(at)})
        print(page, query, len(snapshot[-1]["text"]), "elements", file=sys.stderr)
    Path(sys.argv[1]).write_text(json.dumps(snapshot, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
