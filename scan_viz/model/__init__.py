"""ScanModel: encoders + vocabulary + a matching head, and ``load_model`` for every checkpoint kind."""
from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from scan_viz.errors import ScanVizError
from scan_viz.heads import SCORING_DTYPES, MatchingHead, resolve_head
from scan_viz.heads.engine import DEFAULT_MEMORY_BUDGET, score_matrix
from scan_viz.limits import check_device
from scan_viz.model.checkpoint import CONFIG_FILE, VOCAB_FILE
from scan_viz.model.config import ScanConfig
from scan_viz.model.encoders import build_encoders
from scan_viz.parts import PRETRAINED_DIR
from scan_viz.safe_files import LoadBudget, budget_or_default
from scan_viz.text import EncodedCaption, Vocabulary, pad_ids
from scan_viz.types import Alignment

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclasses.dataclass
class EncodedCaptions:
    """A batch of captions through the text encoder. emb: (n, max_words, d); lengths: (n,) incl. start/end."""

    emb: torch.Tensor
    lengths: torch.Tensor
    encoded: list[EncodedCaption]


class ScanModel:
    """A SCAN-family image-text matching model ready for inference."""

    def __init__(self, config: ScanConfig, vocab: Vocabulary, image_state: dict | None = None,
                 text_state: dict | None = None) -> None:
        if config.vocab_size and config.vocab_size != len(vocab):
            raise ScanVizError(f"the vocabulary has {len(vocab)} words but the model expects {config.vocab_size}: "
                               "pass the vocab file the model was trained with")
        self.config = config.replace(vocab_size=len(vocab))
        self.vocab = vocab
        self.image_encoder, self.text_encoder = build_encoders(self.config)
        try:
            if image_state is not None:
                self.image_encoder.load_state_dict(image_state)
            if text_state is not None:
                self.text_encoder.load_state_dict(text_state)
        except RuntimeError as exc:  # missing / unexpected / misshapen keys
            raise ScanVizError(f"the weights do not fit the model config: {str(exc).splitlines()[0]}") from exc
        self.image_encoder.eval()
        self.text_encoder.eval()
        # the app shares one model between all its sessions, so encoding never casts these: other dtypes and
        # devices get their own copy, made on first use
        self._encoders = {("float32", "cpu"): (self.image_encoder, self.text_encoder)}
        self._encoders_lock = threading.Lock()

    # ----------------------------------------------------------------- encoding
    def head(self, name: str | None = None, dtype: str | None = None, **overrides) -> MatchingHead:
        """A head by name (default: the one the model was trained with); keyword overrides are its settings
        as the head declares them (e.g. lambda_softmax=4, beta=0.05); ``dtype`` the dtype of its region-word
        products. ``coattention`` is the re-ranker trained on this model's encoders (found under pretrained/ by
        their fingerprint)."""
        return resolve_head(name, self, dtype=dtype, **overrides)

    def encoders(self, dtype: str = "float32", device: str = "cpu") -> tuple[torch.nn.Module, torch.nn.Module]:
        """(image encoder, text encoder) in ``dtype`` on ``device``, never changing the model's own float32 CPU
        encoders: another dtype or device gets a copy, made once and kept."""
        if dtype not in DTYPES:  # the encoders' dtypes; bfloat16 is a scoring dtype (see _scoring_head)
            raise ScanVizError(f"dtype must be float32 or float64, got {dtype!r}")
        key = (dtype, check_device(device))
        with self._encoders_lock:
            if key not in self._encoders:
                # rebuilt from the config and loaded, not deep-copied: weight-norm modules cannot be deep-copied
                copies = build_encoders(self.config)
                for copied, own in zip(copies, (self.image_encoder, self.text_encoder)):
                    copied.load_state_dict(own.state_dict())
                    copied.to(device=device, dtype=DTYPES[dtype]).eval()
                self._encoders[key] = copies
            return self._encoders[key]

    def encode_images(self, features: np.ndarray | torch.Tensor, dtype: str = "float32", device: str = "cpu",
                      batch_size: int = 512) -> torch.Tensor:
        """Raw region features (n_images, n_regions, img_dim) -> region embeddings (n_images, n_regions, d)."""
        if not torch.is_tensor(features):
            features = np.asarray(features)  # may be a read-only memmap: chunks are copied below
        if features.ndim != 3 or features.shape[2] != self.config.img_dim:
            raise ScanVizError(f"region features must have shape (n_images, n_regions, {self.config.img_dim}), "
                               f"got {tuple(features.shape)}")
        image_encoder, _ = self.encoders(dtype, device)
        out = []
        with torch.no_grad():
            for start in range(0, features.shape[0], batch_size):
                chunk = features[start:start + batch_size]
                chunk = chunk if torch.is_tensor(chunk) else torch.from_numpy(np.array(chunk, dtype=np.float32))
                out.append(image_encoder(chunk.to(device=device, dtype=DTYPES[dtype])))
        if not out:
            return torch.zeros((0, features.shape[1], self.config.embed_size), dtype=DTYPES[dtype], device=device)
        return torch.cat(out)

    def encode_captions(self, captions: Sequence[str] | Sequence[EncodedCaption], dtype: str = "float32",
                        device: str = "cpu", batch_size: int = 1024) -> EncodedCaptions:
        """Sentences (or already tokenised captions) -> word embeddings (n, max_words, d), zero past each length."""
        if isinstance(captions, str):
            captions = [captions]
        encoded = [c if isinstance(c, EncodedCaption) else self.vocab.encode(c) for c in captions]
        ids, lengths = pad_ids([e.ids for e in encoded])
        _, text_encoder = self.encoders(dtype, device)
        ids_t, len_t = torch.from_numpy(ids), torch.from_numpy(lengths)
        emb = torch.zeros((len(encoded), ids.shape[1], self.config.embed_size), dtype=DTYPES[dtype], device=device)
        with torch.no_grad():
            for start in range(0, len(encoded), batch_size):
                sl = slice(start, start + batch_size)
                emb[sl] = text_encoder(ids_t[sl].to(device), len_t[sl])
        return EncodedCaptions(emb, len_t.to(device), encoded)

    # ------------------------------------------------------------------ scoring
    def similarity(self, features: np.ndarray | torch.Tensor, captions: Sequence[str], dtype: str = "float32",
                   device: str = "cpu", head: str | MatchingHead | None = None,
                   region_lengths: np.ndarray | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                   progress: Callable[[int, int], None] | None = None,
                   caption_chunk: int = 4096) -> np.ndarray:
        """Image-sentence scores (n_images, n_captions) from raw region features and sentences.

        Captions are encoded and scored in length-sorted chunks, so word embeddings for at most
        ``caption_chunk`` captions, padded to their own longest, exist at a time. ``dtype="bfloat16"``: the
        head's region-word products in bf16, the rest in float32 (scores come back as float32).
        """
        matcher, dtype = _scoring_head(self, head, dtype)
        regions = self.encode_images(features, dtype, device)
        encoded = [self.vocab.encode(c) for c in captions]
        order = np.argsort([len(e.ids) for e in encoded], kind="stable")
        rl = None if region_lengths is None else torch.as_tensor(np.asarray(region_lengths), device=device)
        out = np.zeros((regions.shape[0], len(encoded)), dtype=np.float64 if dtype == "float64" else np.float32)
        total, done = out.size, 0
        for start in range(0, len(order), caption_chunk):
            cols = order[start:start + caption_chunk]
            caps = self.encode_captions([encoded[i] for i in cols], dtype, device)

            def chunk_progress(chunk_done: int, _chunk_total: int) -> None:
                if progress is not None:
                    progress(done + chunk_done, total)
            out[:, cols] = score_matrix(matcher, regions, caps.emb, caps.lengths, rl, memory_budget=memory_budget,
                                        progress=chunk_progress)
            done += regions.shape[0] * len(cols)
        return out

    def align(self, features: np.ndarray, text: str, head: str | MatchingHead | None = None,
              boxes: np.ndarray | None = None, region_labels: list[str] | None = None,
              image_size: tuple[int, int] | None = None, dtype: str = "float32",
              n_regions: int | None = None, device: str = "cpu") -> Alignment:
        """One pair's attention, relevance and score. features: (n_regions, img_dim).

        ``n_regions``: how many of the rows are real regions (the rest is padding, e.g. from a TSV with fewer
        boxes than the largest image); padded regions take no part in the attention and are dropped.
        ``dtype``, ``device``: where the encoders and the attention run (the arrays returned are on the CPU).
        """
        matcher, dtype = _scoring_head(self, head, dtype)
        features = np.asarray(features)
        if features.ndim != 2:
            raise ScanVizError(f"one image's region features must be 2-D (n_regions, img_dim), got {features.shape}")
        if n_regions is not None and n_regions < len(features):
            features = features[:n_regions]
            boxes = None if boxes is None else boxes[:n_regions]
            region_labels = None if region_labels is None else region_labels[:n_regions]
        regions = self.encode_images(features[None], dtype, device)
        caps = self.encode_captions([text], dtype, device)
        with torch.no_grad():
            res = matcher.scores(regions, caps.emb, caps.lengths, return_attention=True)
        n = int(caps.lengths[0])

        def pair(values: torch.Tensor | None, count: int | None = None) -> np.ndarray | None:
            return None if values is None else values[0, 0, :count].double().cpu().numpy()

        enc = caps.encoded[0]
        return Alignment(
            text=text,
            words=["<start>"] + [t.text for t in enc.tokens] + ["<end>"],
            spans=[None] + [(t.start, t.end) for t in enc.tokens] + [None],
            unknown=[False] + list(enc.unknown) + [False],
            attention=pair(res.attention, n), score=float(res.scores[0, 0]), head=matcher.name,
            word_relevance=pair(res.word_relevance, n), region_relevance=pair(res.region_relevance),
            attention_label=matcher.attention_label, word_relevance_label=matcher.word_relevance_label,
            region_relevance_label=matcher.region_relevance_label, head_params=matcher.hyperparameters(),
            boxes=boxes, region_labels=region_labels, image_size=image_size)

    # ------------------------------------------------------------------- saving
    def save(self, directory: str | Path) -> None:
        """The project's format: config.json + model.safetensors + vocab.json."""
        from scan_viz.model.checkpoint import save_model_dir

        directory = Path(directory)
        save_model_dir(directory, self.config, self.image_encoder.float().state_dict(),
                       self.text_encoder.float().state_dict())
        self.vocab.save(directory / VOCAB_FILE)


def _scoring_head(model: ScanModel, head: str | MatchingHead | None, dtype: str) -> tuple[MatchingHead, str]:
    """The head to score with and the dtype the embeddings are computed in: for ``bfloat16`` the head's products
    run in bf16 and the embeddings stay float32."""
    if dtype not in SCORING_DTYPES:
        raise ScanVizError(f"dtype must be one of {', '.join(SCORING_DTYPES)}, got {dtype!r}")
    matcher = resolve_head(head, model)
    if dtype == "bfloat16":
        return matcher.with_product_dtype(dtype), "float32"
    return matcher, dtype


def bundled_models() -> list[str]:
    """Names of the matching models under ``pretrained/`` (folders with a config.json; the detector, stage-1
    and co-attention folders beside them are parts of a model, not models)."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / CONFIG_FILE).is_file())


def load_model(path_or_name: str | Path, vocab: str | Path | Vocabulary | None = None,
               budget: LoadBudget | None = None) -> ScanModel:
    """An official checkpoint file (``vocab`` required), a model directory, or a name under ``pretrained/``.

    What the weights expand to is checked before they are read and charged to ``budget`` (default: a fresh
    :class:`~scan_viz.safe_files.LoadBudget`)."""
    from scan_viz.model.checkpoint import load_model_dir, load_official_checkpoint

    budget = budget_or_default(budget)  # one budget for the weights and the vocabulary
    path = Path(path_or_name)
    if not path.exists() and (PRETRAINED_DIR / str(path_or_name)).is_dir():
        path = PRETRAINED_DIR / str(path_or_name)
    if path.is_dir():
        config, image_state, text_state = load_model_dir(path, budget)
        vocab = vocab if vocab is not None else path / VOCAB_FILE
    elif path.is_file():
        if vocab is None:
            raise ScanVizError(f"{path} is an official checkpoint: pass its vocabulary JSON too (--vocab)")
        ckpt = load_official_checkpoint(path, budget)
        config, image_state, text_state = ckpt.config, ckpt.image_state, ckpt.text_state
    else:
        names = bundled_models()
        hint = f" (bundled models: {', '.join(names)})" if names else ""
        raise ScanVizError(f"no model at {path_or_name}: give a checkpoint file, a model directory or a name{hint}")
    if not isinstance(vocab, Vocabulary):
        vocab = Vocabulary.load(vocab, budget)
    return ScanModel(config, vocab, image_state, text_state)
