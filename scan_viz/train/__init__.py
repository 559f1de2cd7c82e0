"""Training SCAN with the official recipe (``scan-viz train``).

The library never imports this package; only the CLI's ``train`` command and scripts that build models do.
``train(config, data_dir, out_dir, options)`` is the entry point; :mod:`scan_viz.train.args` maps the command
line onto it. Torch is imported on first use, so ``scan-viz --help`` stays fast.
"""
from __future__ import annotations

__all__ = ["train", "TrainOptions", "TrainResult"]


def __getattr__(name: str):
    if name in __all__:
        from scan_viz.train import loop

        return getattr(loop, name)
    raise AttributeError(name)
