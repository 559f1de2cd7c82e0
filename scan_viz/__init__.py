"""scan-viz: see how SCAN-family image-text matching models line words up with image regions."""
from scan_viz.errors import ScanVizError
from scan_viz.model.config import ScanConfig

__version__ = "0.1.0"
__all__ = ["ScanConfig", "ScanVizError", "ScanModel", "load_model", "steps", "__version__"]


def __getattr__(name: str):
    # torch-heavy modules load on first use, so `import scan_viz` and `scan-viz --help` stay fast
    if name in ("ScanModel", "load_model"):
        from scan_viz import model

        return getattr(model, name)
    if name == "steps":  # a head's computation on one pair, step by step (scan_viz.heads.walk)
        from scan_viz.heads.walk import steps

        return steps
    raise AttributeError(name)
