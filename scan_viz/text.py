"""Sentence -> tokens -> vocabulary ids, exactly as the official SCAN code does it.

The official code lowercases a caption and runs ``nltk.tokenize.word_tokenize`` on it, then maps tokens to
ids with the vocabulary JSON that ships with each model (``[<start>] + tokens + [<end>]``, unknown words ->
``<unk>``). A tokenizer that splits hyphens, contractions or punctuation differently silently changes an
official model's scores, so this module reuses NLTK's own Treebank tokenizer rather than re-implementing it,
and adds what the app needs on top: the character span of every token in the text the user typed, so the
surface form of a word can be highlighted.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scan_viz.errors import ScanVizError
from scan_viz.safe_files import LoadBudget, read_json

PAD = "<pad>"
START = "<start>"
END = "<end>"
UNK = "<unk>"
#: The official vocab.py adds these four first, so their indices are fixed in every released vocabulary.
SPECIALS: dict[str, int] = {PAD: 0, START: 1, END: 2, UNK: 3}

EMPTY_SENTENCE_MESSAGE = "the sentence is empty: type a few words"

# NLTK rewrites double quotes: `"` (and `''` after a space or bracket) becomes the opening token "``", any
# other `"` or `''` becomes the closing token "''". These are the surface forms each quote token can come
# from, tried in this order when aligning tokens with the text.
_QUOTE_SOURCES: dict[str, tuple[str, ...]] = {
    "``": ("``", '"', "''"),
    "''": ("''", '"'),
}


@functools.cache
def _word_tokenizer():
    """NLTK's word tokenizer, imported on first use: ``import nltk`` loads its whole package (collocations, SciPy's
    statistics, scikit-learn's wrappers: about 1.7 s on this project's machine), which a command that refuses its
    arguments, or never tokenizes, should not wait for."""
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


@dataclass(frozen=True)
class Token:
    """One word as the model sees it, and where it came from in the text the user typed.

    ``text`` is the lowercased token fed to the vocabulary (with NLTK's quote tokens "``" / "''" for `"`);
    ``text_original[start:end]`` is its surface form, which is what the app highlights. A token that could
    not be located in the text has ``start == end`` (an empty span at the place it should have been).
    """

    text: str
    start: int
    end: int


def _lowered_with_offsets(text: str) -> tuple[str, list[int]]:
    """Lowercase ``text`` like the official code and map every lowered character back to the original.

    ``str.lower`` can change the length of a string ('İ' lowers to 'i' + combining dot), so offsets in the
    lowered text are not offsets in the original. Returns the lowered text and ``origin`` with
    ``len(origin) == len(lowered) + 1``: ``origin[j]`` is the index in ``text`` of the character that
    produced lowered character ``j``, and the last entry is ``len(text)``.
    """
    lowered = text.lower()
    origin: list[int] = []
    for i, char in enumerate(text):
        origin.extend([i] * len(char.lower()))
    if len(origin) != len(lowered):
        # Casing is context-free in length for every Unicode version so far (only final sigma depends on
        # context, and it is one character either way); clamp rather than crash if that ever changes.
        origin = [min(j, len(text) - 1) for j in range(len(lowered))] if text else []
    origin.append(len(text))
    return lowered, origin


def _align(lowered: str, words: Sequence[str]) -> Iterator[tuple[int, int]]:
    """Yield the ``(start, end)`` span in ``lowered`` of each token in ``words``, left to right.

    NLTK's tokenizer only deletes whitespace and rewrites double quotes, so each token is found right after
    the previous one once whitespace is skipped. A token that is not there (not expected from NLTK, but a
    highlight must never crash the app) gets an empty span at the current position, and the cursor stays
    put so that the tokens after it can still be aligned.
    """
    cursor = 0
    for word in words:
        while cursor < len(lowered) and lowered[cursor].isspace():
            cursor += 1
        for source in _QUOTE_SOURCES.get(word, (word,)):
            if lowered.startswith(source, cursor):
                yield cursor, cursor + len(source)
                cursor += len(source)
                break
        else:
            yield cursor, cursor


def tokenize(text: str) -> list[Token]:
    """Split a caption into the tokens an official SCAN model was trained on, with their character spans.

    Reproduces the official ``nltk.tokenize.word_tokenize(caption.lower())`` for a single sentence: NLTK's
    Treebank tokenizer on the lowercased text ("t-shirt" stays one token, "don't" -> "do", "n't",
    "cat's" -> "cat", "'s", `"` -> "``" / "''").

    Named deviation: ``word_tokenize`` first splits the text into sentences with the Punkt model, which is a
    data download that scan-viz does not require. Here the whole text is tokenised as one sentence (what
    ``word_tokenize(..., preserve_line=True)`` does), so the tokens of multi-sentence input can differ from
    the official pipeline (e.g. "a cat. a dog" keeps "cat." as one token). Captions, the official training
    data, are single sentences. Like Punkt, trailing whitespace is dropped before tokenising (it can change
    NLTK's output: "she'd' " -> "she", "'d", "'" but word_tokenize gives "she'd", "'").

    Spans index ``text`` itself, not its lowercased copy, even where lowercasing changes the length.
    """
    lowered, origin = _lowered_with_offsets(text)
    # Punkt drops trailing whitespace from the last sentence; the leading whitespace is kept.
    words = _word_tokenizer().tokenize(lowered.rstrip())
    return [
        Token(word, origin[start], origin[start] if end == start else origin[end - 1] + 1)
        for word, (start, end) in zip(words, _align(lowered, words))
    ]


@dataclass(frozen=True)
class EncodedCaption:
    """A caption ready for the text encoder, plus what the app needs to show it.

    ``ids`` is ``[<start>] + token ids + [<end>]``, the official data loader's layout, so
    ``len(ids) == len(tokens) + 2``. ``tokens`` are the user-visible words (no start/end markers) and
    ``unknown[i]`` is True where ``tokens[i]`` is not in the vocabulary and was encoded as ``<unk>``.
    """

    ids: list[int]
    tokens: list[Token]
    unknown: list[bool]


def _vocab_error(path: Path, problem: str) -> ScanVizError:
    return ScanVizError(
        f"{path} is not a SCAN vocabulary file: {problem}; "
        "use the vocab JSON that came with the model (e.g. f30k_precomp_vocab.json)"
    )


def _as_index(value: object) -> int | None:
    """``value`` as a vocabulary index if it is a non-negative integer (JSON ints, or digit strings)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _table_problem(word2idx: Mapping[str, int]) -> str | None:
    """What is wrong with a word -> index table (specials at 0..3, indices 0..N-1 each used once), or None."""
    for word, expected in SPECIALS.items():
        if word not in word2idx:
            return f"the special word {word} is missing"
        if word2idx[word] != expected:
            return f"the special word {word} has index {word2idx[word]}, not {expected}"
    seen: dict[int, str] = {}
    for word, index in word2idx.items():
        if index in seen:
            return f"index {index} is used by two words"
        seen[index] = word
    if max(seen) != len(seen) - 1:
        return f"indices must run from 0 to {len(seen) - 1} without gaps (the largest is {max(seen)})"
    return None


class Vocabulary:
    """The word <-> index table of a SCAN model, in the official JSON layout.

    ``word2idx`` and ``idx2word`` are inverse dicts over indices ``0 .. idx - 1``; ``idx`` is the size (the
    next free index, as in the official class). ``<pad>``, ``<start>``, ``<end>`` and ``<unk>`` are always
    0, 1, 2 and 3; the other indices are whatever the file says (Python 2 dict order in released files).
    """

    def __init__(self, word2idx: Mapping[str, int]) -> None:
        """Wrap a complete word -> index table; it must hold the specials at 0..3 and indices 0..N-1."""
        problem = _table_problem(word2idx)
        if problem is not None:
            raise ScanVizError(f"not a valid vocabulary: {problem}; build it with Vocabulary.build "
                               "or load an official vocab JSON")
        self.word2idx: dict[str, int] = dict(word2idx)
        self.idx2word: dict[int, str] = {index: word for word, index in self.word2idx.items()}
        self.idx: int = len(self.word2idx)

    @classmethod
    def from_words(cls, words: Iterable[str]) -> Vocabulary:
        """The specials at 0..3, then ``words`` in the given order (repeats and specials are skipped)."""
        word2idx = dict(SPECIALS)
        for word in words:
            word2idx.setdefault(word, len(word2idx))
        return cls(word2idx)

    @classmethod
    def build(cls, captions: Iterable[str], threshold: int = 4) -> Vocabulary:
        """Build a vocabulary from training captions like the official ``vocab.py``.

        Keeps every token of :func:`tokenize` seen at least ``threshold`` times (the official default is 4).
        The official file lists words in Python 2 dict order; here they are sorted by descending count, then
        alphabetically, so that the same captions always give the same indices.
        """
        if threshold < 1:
            raise ScanVizError(f"the word count threshold must be at least 1 (got {threshold})")
        counts = Counter(token.text for caption in captions for token in tokenize(caption))
        kept = sorted((word for word, count in counts.items() if count >= threshold),
                      key=lambda word: (-counts[word], word))
        return cls.from_words(kept)

    @classmethod
    def load(cls, path: str | Path, budget: LoadBudget | None = None) -> Vocabulary:
        """Read an official vocab JSON (``{"word2idx": ..., "idx2word": {"0": "<pad>", ...}, "idx": N}``).

        A file with only ``word2idx`` is accepted too. Anything malformed raises :class:`ScanVizError`
        naming the file and the problem.
        """
        path = Path(path)
        data = read_json(path, "vocabulary file", budget=budget)
        if not isinstance(data, dict) or not isinstance(data.get("word2idx"), dict):
            raise _vocab_error(path, 'it has no "word2idx" object')

        word2idx: dict[str, int] = {}
        for n, (word, value) in enumerate(data["word2idx"].items(), start=1):
            index = _as_index(value)
            if index is None:
                # no message quotes the file's words: the file may be anything a visitor pointed at
                raise _vocab_error(path, f"entry {n} of word2idx has an index that is not a non-negative integer")
            word2idx[word] = index
        problem = _table_problem(word2idx)
        if problem is not None:
            raise _vocab_error(path, problem)
        vocab = cls(word2idx)

        # The official loader reads idx2word as written, so a file whose two tables disagree would decode
        # ids differently there: refuse it rather than pick one.
        idx2word = data.get("idx2word")
        if idx2word is not None:
            if not isinstance(idx2word, dict):
                raise _vocab_error(path, '"idx2word" is not an object')
            for n, (key, word) in enumerate(idx2word.items(), start=1):
                index = _as_index(key)
                if index is None:
                    raise _vocab_error(path, f"key {n} of idx2word is not a non-negative integer")
                if vocab.idx2word.get(index) != word:
                    raise _vocab_error(path, f"idx2word and word2idx disagree on the word of index {index}")
            if len(idx2word) != len(vocab):
                raise _vocab_error(path, f"idx2word has {len(idx2word)} entries, word2idx {len(vocab)}")
        size = data.get("idx")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size != len(vocab)):
            raise _vocab_error(path, f'"idx" is not {len(vocab)}, the number of words in word2idx')
        return vocab

    def save(self, path: str | Path) -> None:
        """Write the official JSON layout, which the official SCAN code can read back."""
        data = {
            "word2idx": self.word2idx,
            "idx2word": {str(index): word for index, word in sorted(self.idx2word.items())},
            "idx": self.idx,
        }
        try:
            Path(path).write_text(json.dumps(data), encoding="utf-8")
        except OSError as error:
            raise ScanVizError(f"cannot write vocabulary file {path} ({error}): check the folder") from None

    def __len__(self) -> int:
        return self.idx

    def __contains__(self, word: object) -> bool:
        return word in self.word2idx

    def __call__(self, word: str) -> int:
        """The index of ``word``, or of ``<unk>`` if the vocabulary lacks it (the official behaviour)."""
        return self.word2idx.get(word, SPECIALS[UNK])

    lookup = __call__

    def word(self, index: int) -> str:
        """The word at ``index``; an index outside the vocabulary means vocabulary and model do not match."""
        try:
            return self.idx2word[index]
        except KeyError:
            raise ScanVizError(
                f"index {index} is not in the vocabulary (size {self.idx}): "
                "use the vocab JSON that came with the model"
            ) from None

    def encode(self, text: str) -> EncodedCaption:
        """Tokenise ``text`` and turn it into ``[<start>] + ids + [<end>]`` like the official data loader."""
        tokens = tokenize(text)
        if not tokens:
            raise ScanVizError(EMPTY_SENTENCE_MESSAGE)
        unknown = [token.text not in self.word2idx for token in tokens]
        ids = [SPECIALS[START], *(self(token.text) for token in tokens), SPECIALS[END]]
        return EncodedCaption(ids=ids, tokens=tokens, unknown=unknown)

    def encode_batch(self, texts: Iterable[str]) -> list[EncodedCaption]:
        """:meth:`encode` for each text, in order."""
        return [self.encode(text) for text in texts]

    def __repr__(self) -> str:
        return f"Vocabulary({self.idx} words)"


def pad_ids(encoded: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Stack id lists into a zero-padded batch for the text encoder.

    Returns ``ids`` of shape ``(n_captions, max_len)`` padded with ``<pad>`` (0) on the right, and
    ``lengths`` of shape ``(n_captions,)``; both int64.
    """
    lengths = np.array([len(ids) for ids in encoded], dtype=np.int64)
    batch = np.full((len(encoded), int(lengths.max(initial=0))), SPECIALS[PAD], dtype=np.int64)
    for row, ids in enumerate(encoded):
        batch[row, : len(ids)] = ids
    return batch, lengths
