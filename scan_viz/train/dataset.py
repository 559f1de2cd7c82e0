"""Training pairs from a precomputed split, as the official ``PrecompDataset`` serves them.

Item ``k`` is caption ``k`` with its image's region features (caption k belongs to image ``k // 5``). Captions
are tokenised once up front into one flat id array, so DataLoader workers share it instead of re-tokenising.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from scan_viz.errors import ScanVizError
from scan_viz.text import Vocabulary, pad_ids


class EncodedCaptionIds:
    """Token ids of many captions (``<start>``/``<end>`` included) in one flat int64 array plus offsets."""

    def __init__(self, captions: Sequence[str], vocab: Vocabulary, where: str = "captions") -> None:
        ids: list[int] = []
        offsets = [0]
        n_tokens = n_unknown = 0
        for k, caption in enumerate(captions):
            try:
                encoded = vocab.encode(caption)
            except ScanVizError as exc:
                raise ScanVizError(f"{where} line {k + 1}: {exc}") from None
            ids.extend(encoded.ids)
            offsets.append(len(ids))
            n_tokens += len(encoded.unknown)
            n_unknown += sum(encoded.unknown)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        #: share of words the vocabulary lacks: a high value means the vocab belongs to another dataset
        self.unknown_rate = n_unknown / max(n_tokens, 1)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, k: int) -> np.ndarray:
        return self.ids[self.offsets[k]:self.offsets[k + 1]]

    def padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All captions as ids (n, max_len) padded with ``<pad>``, and lengths (n,)."""
        ids, lengths = pad_ids([self[k] for k in range(len(self))])
        return torch.from_numpy(ids), torch.from_numpy(lengths)


class CaptionImagePairs(Dataset):
    """(image features (n_regions, img_dim), caption ids (n_words,), caption index) for every caption.

    Caption ``k`` takes row ``k // im_div`` of the ``.npy`` (the official ``PrecompDataset`` rule: ``im_div`` is 5
    with one row per image, 1 with one row per caption). The file is memory-mapped lazily in each process and
    never pickled, so workers start fast whatever the multiprocessing start method.
    """

    def __init__(self, features_path: Path, im_div: int, captions: EncodedCaptionIds) -> None:
        self.features_path = Path(features_path)
        self.im_div = im_div
        self.captions = captions
        self._features: np.ndarray | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_features"] = None
        return state

    @property
    def features(self) -> np.ndarray:
        if self._features is None:
            self._features = np.load(self.features_path, mmap_mode="r", allow_pickle=False)
        return self._features

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        return np.array(self.features[k // self.im_div], dtype=np.float32), self.captions[k], k


def collate_pairs(batch: Sequence[tuple[np.ndarray, np.ndarray, int]]) -> dict[str, torch.Tensor]:
    """A batch: images (b, n_regions, img_dim), ids (b, max_len), lengths (b,), index (b,).

    The official collate sorts by caption length for packing; the text encoder packs with
    ``enforce_sorted=False`` instead, and the loss does not depend on the order of the pairs.
    """
    images, ids, index = zip(*batch)
    padded, lengths = pad_ids(ids)
    return {"images": torch.from_numpy(np.stack(images)), "ids": torch.from_numpy(padded),
            "lengths": torch.from_numpy(lengths), "index": torch.tensor(index, dtype=torch.int64)}


class EpochShuffle(Sampler[int]):
    """A fresh random order of ``n`` items each epoch, drawn from ``(seed, epoch)`` alone.

    Because the order does not depend on a generator carried across epochs, a run resumed at epoch k sees the
    same batches as an uninterrupted run (call :meth:`set_epoch` before iterating).
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())
