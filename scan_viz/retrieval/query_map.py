"""The token screen's query map: a linear map of the caption's word embeddings, distilled from exhaustive SCAN.

The token screen (:mod:`scan_viz.retrieval.tokens`) scores an image by an LSE-MaxSim: each word's best region
cosine, pooled with SCAN's LogSumExp. SCAN itself scores each word against an *attended* region vector, a softmax
mix of the regions, normalised across the caption's words first, so the two scores rank images differently. The
map (a d x d matrix M, no bias) replaces each word embedding u by ``M u / |M u|`` before the screen looks it up; it
is trained on the training split so that the screen's scores of a batch of images rank them as exhaustive SCAN's
do (a listwise distillation: cross-entropy between softmax(SCAN / tau) and softmax(screen / tau) over the batch's
images, ``python -m scan_viz.train.query_map``). Only the query side changes: the regions, their codes and the
token index stay as they are, and so does stage 2, which re-scores with the model's own head and unmapped words.

Saved beside the model like a stage-1 head (``query_map.json`` + ``query_map.safetensors``) and found for a model by
its encoders' fingerprint (:func:`find_query_map`); a map trained on other weights is never used.

A map may also carry ``word_moment``, E[u u^T] (d x d) of its mapped words over the training split's captions
(:func:`word_moment`): a token index fits its residual codes to it (:mod:`scan_viz.retrieval.tokens`), so that
they keep the directions the screen's query words look along.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from scan_viz.errors import ScanVizError
from scan_viz.parts import find_trained_for, load_module_dir, part_width, save_module_dir

QUERY_MAP_CONFIG = "query_map.json"
QUERY_MAP_WEIGHTS = "query_map.safetensors"
QUERY_MAP_FORMAT = "scan-viz-query-map/1"
RETRAIN = "python -m scan_viz.train.query_map"


class QueryMapModule(nn.Module):
    """Word embeddings (..., d) -> ``words @ weight.T`` at unit length; the identity at initialisation. A zero row (a
    caption's padding) stays 0, with a zero gradient (the norm is clamped, not divided by as it is)."""

    def __init__(self, dim: int, moment: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(dim))
        if moment:  # the mapped training words' second moment (a buffer: saved with the weights, never trained)
            self.register_buffer("word_moment", torch.zeros(dim, dim))

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        mapped = words @ self.weight.T
        return mapped / mapped.norm(dim=-1, keepdim=True).clamp(min=1e-12)


@dataclasses.dataclass
class QueryMap:
    """A trained map and what it was trained on: ``training`` holds the recipe (data, epochs, tau, lr, loss)."""

    module: QueryMapModule
    base_model: str
    base_fingerprint: str
    training: dict | None = None
    path: Path | None = None

    @torch.no_grad()
    def __call__(self, words: torch.Tensor) -> torch.Tensor:
        """One caption's real word embeddings (L, d) -> the screen's query words (L, d) float32, unit rows."""
        return self.module(words.float())

    @property
    def word_moment(self) -> torch.Tensor | None:
        """E[u u^T] (d, d) of the mapped words of the captions it was measured on, or None (not measured)."""
        return getattr(self.module, "word_moment", None)

    def with_word_moment(self, moment: torch.Tensor, note: dict) -> "QueryMap":
        """The same map carrying ``moment``; ``note`` (what it was measured on) goes into ``training``."""
        module = QueryMapModule(int(self.module.weight.shape[0]), moment=True)
        module.weight.data.copy_(self.module.weight.data)
        module.word_moment.copy_(moment)
        return dataclasses.replace(self, module=module.eval(), training={**(self.training or {}), "word_moment": note})

    def save(self, directory: str | Path) -> None:
        config = {"format": QUERY_MAP_FORMAT, "dim": int(self.module.weight.shape[0]), "base_model": self.base_model,
                  "base_fingerprint": self.base_fingerprint, "word_moment": self.word_moment is not None,
                  "training": self.training}
        save_module_dir(directory, self.module, QUERY_MAP_WEIGHTS, config, QUERY_MAP_CONFIG)


@torch.no_grad()
def word_moment(query_map: QueryMap, words: torch.Tensor, lengths: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """E[u u^T] (d, d) float32 over every real word u of captions ``words`` (C, L, d) with ``lengths`` (C,), each
    mapped as the screen maps it (``query_map``), accumulated in float64."""
    dim = words.shape[-1]
    total, count = torch.zeros(dim, dim, dtype=torch.float64), 0
    for s in range(0, len(words), batch):
        w, n = words[s:s + batch], lengths[s:s + batch]
        real = torch.arange(w.shape[1])[None, :] < n[:, None]
        u = query_map.module(w.float())[real].double()
        total += u.T @ u
        count += len(u)
    if count == 0:
        raise ScanVizError("no caption words to measure the query words' second moment on")
    return (total / count).float()


def load_query_map(directory: str | Path) -> QueryMap:
    def build(c: dict) -> tuple[QueryMapModule, QueryMap]:
        module = QueryMapModule(part_width(c, "dim"), moment=c.get("word_moment") is True)
        return module, QueryMap(module, str(c["base_model"]), str(c["base_fingerprint"]), c.get("training"),
                                Path(directory))

    return load_module_dir(directory, QUERY_MAP_CONFIG, QUERY_MAP_FORMAT, QUERY_MAP_WEIGHTS, build,
                           "token-screen query map", RETRAIN)


def find_query_map(model, search_dirs: list[Path] | None = None) -> QueryMap | None:
    """The query map distilled for exactly this model's encoders (by fingerprint), or None (the screen then looks
    the words up as they are)."""
    directory = find_trained_for(model, QUERY_MAP_CONFIG, search_dirs)
    return None if directory is None else load_query_map(directory)


def map_words(query_map: QueryMap | None, words: torch.Tensor) -> torch.Tensor:
    """A caption's real word embeddings (L, d) as the screen looks them up: mapped when there is a map."""
    return words if query_map is None else query_map(words)


def query_map_option(model, choice: str) -> QueryMap | None:
    """A benchmark's ``--query-map`` choice: ``auto`` (the model's map, if one was distilled) or ``none``."""
    if choice not in ("auto", "none"):
        raise ValueError(f"--query-map must be auto or none, not {choice!r}")
    return find_query_map(model) if choice == "auto" else None
