"""What a training run needs beyond the model's :class:`~scan_viz.model.config.ScanConfig` (no torch import here)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from scan_viz.errors import ScanVizError

if TYPE_CHECKING:  # nltk (via scan_viz.text) takes a second to import; the CLI parser must not pay for it
    from scan_viz.text import Vocabulary


@dataclasses.dataclass
class TrainOptions:
    """Data, bookkeeping and runtime settings of a run; hyperparameters live in ScanConfig.

    ``vocab``: an official vocab JSON (path) or a Vocabulary; None builds one from the training captions
    (words seen at least ``vocab_threshold`` times, the official ``vocab.py`` rule) and saves it in the run dir.
    ``max_dev_captions``: the official code validates on the first 5,000 dev captions only; 0 or None keeps all.
    ``init_from``: a model (directory, or a name under pretrained/) whose encoder weights a new run starts from
    (fine-tuning, e.g. a CHAN or CAAN head on a trained SCAN model's encoders); the run then uses that model's
    vocabulary, and the model's encoder sizes must equal the config's.
    ``product_dtype``: ``"bfloat16"`` runs the training step's region-word products in bfloat16 (the head's
    ``product_dtype``; dev scoring stays float64); None keeps float32.
    ``progress``: per-iteration output (a tqdm bar on a terminal, plain lines every ``log_every`` iterations
    otherwise); epoch summaries are always logged through ``log``.
    """

    train_split: str = "train"
    dev_split: str = "dev"
    vocab: str | Path | Vocabulary | None = None
    vocab_threshold: int = 4
    workers: int = 2
    seed: int = 0
    device: str = "cpu"
    max_dev_captions: int | None = 5000
    resume: bool = False
    init_from: str | Path | None = None
    log_every: int = 10
    progress: bool = True
    product_dtype: str | None = None
    log: Callable[[str], None] = print

    def validate(self) -> None:
        """Raise ScanVizError for a setting no run can use."""
        if self.workers < 0:
            raise ScanVizError(f"--workers must be 0 or more, got {self.workers}")
        if self.log_every < 1:
            raise ScanVizError(f"--log-every must be at least 1, got {self.log_every}")
        if self.vocab_threshold < 1:
            raise ScanVizError(f"--vocab-threshold must be at least 1, got {self.vocab_threshold}")
        if self.max_dev_captions is not None and self.max_dev_captions < 0:
            raise ScanVizError(f"--max-dev-captions must be 0 (keep all) or positive, got {self.max_dev_captions}")
        if self.product_dtype not in (None, "float32", "bfloat16"):
            raise ScanVizError(f"--train-products must be float32 or bfloat16, got {self.product_dtype!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ScanVizError(f"--device must be cpu or cuda, got {self.device!r}")
