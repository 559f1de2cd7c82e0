"""Tests for scan_viz.text: NLTK parity of the tokenizer, character spans, and the official vocab format."""

from __future__ import annotations

import json
import random
from pathlib import Path

import nltk.tokenize
import numpy as np
import pytest
from nltk.tokenize import NLTKWordTokenizer
from nltk.tokenize.punkt import PunktSentenceTokenizer

from scan_viz.errors import ScanVizError
from scan_viz.text import (
    SPECIALS,
    EncodedCaption,
    Token,
    Vocabulary,
    _align,
    pad_ids,
    tokenize,
)

official_tokenizer = NLTKWordTokenizer()


def official_tokens(caption: str) -> list[str]:
    """The official word_tokenize(caption.lower()) for one sentence, without the Punkt data.

    Punkt returns the last sentence without its trailing whitespace, and that whitespace can change NLTK's
    output ("she'd' " vs "she'd'"), so it is stripped here too.
    """
    return official_tokenizer.tokenize(caption.lower().rstrip())

# Forms NLTK may give a double quote; the original text then holds one of these instead of the token.
QUOTE_TOKENS = {"``", "''"}
QUOTE_SURFACES = {'"', "``", "''"}

WORDS = [
    "a", "man", "woman", "dog", "cat", "bench", "street", "t-shirt", "x-ray", "well-known", "ice-cream",
    "don't", "can't", "won't", "it's", "cat's", "dogs'", "i'm", "they're", "we'll", "she'd", "gonna",
    "café", "naïve", "İstanbul", "Straße", "façade", "Ærø", "ΟΔΟΣ", "🐶", "👍🏽", "3.5", "1,000", "$5", "50%",
    "a/b", "&", "...", "--", "e-mail", "bob@example.com", "http://example.com/a?b=1", "#tag", "2:30",
    "o'clock", "rock'n'roll", "'tis", "«quoted»", "“curly”", "it’s", "K9", "ABC", "MiXeD", "(big)", "[red]",
    "{x}", "<b>", "wow!", "why?", "semi;colon", "a*b", "``tick''", "''x''", "'single'", "1.", "U.S.",
]
SPACES = [" ", " ", " ", "  ", "\t", " \t ", "\u00a0"]


def make_caption(rng: random.Random) -> str:
    """One varied single-sentence caption: random words, punctuation, quotes, case and whitespace."""
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, 12))]
    for _ in range(rng.randint(0, 2)):  # attach punctuation to a random word
        i = rng.randrange(len(words))
        words[i] = words[i] + rng.choice([",", ",", ";", ":", "'", "'s", ")", '"'])
    if rng.random() < 0.3:  # wrap a stretch in quotes or brackets
        i = rng.randrange(len(words))
        j = rng.randrange(i, len(words))
        left, right = rng.choice([('"', '"'), ("'", "'"), ("(", ")"), ('"', '."'), ("``", "''")])
        words[i], words[j] = left + words[i], words[j] + right
    text = words[0]
    for word in words[1:]:
        text += rng.choice(SPACES) + word
    text += rng.choice(["", "", ".", ".", " .", "!", "?", "...", '."', ".)"])
    case = rng.random()
    if case < 0.15:
        text = text.upper()
    elif case < 0.3:
        text = text.capitalize()
    return rng.choice(["", "", " ", "\t", "  "]) + text + rng.choice(["", "", " ", "\n", " \t"])


CAPTIONS = [make_caption(random.Random(seed)) for seed in range(1200)]


def assert_spans_match(caption: str, tokens: list[Token]) -> None:
    """Every span lies in the caption, in order, and its lowercased surface form is the token."""
    previous = 0
    for token in tokens:
        assert previous <= token.start <= token.end <= len(caption), (caption, token)
        surface = caption[token.start:token.end]
        if token.text in QUOTE_TOKENS:
            assert surface in QUOTE_SURFACES, (caption, token)
        else:
            # Lowercasing a slice can pick the other Greek sigma: 'Σ' is 'ς' at the end of a word only.
            assert surface.lower().replace("ς", "σ") == token.text.replace("ς", "σ"), (caption, token)
        previous = token.start


def test_parity_with_official_tokenizer() -> None:
    for caption in CAPTIONS:
        tokens = tokenize(caption)
        assert [t.text for t in tokens] == official_tokens(caption), caption
        assert_spans_match(caption, tokens)


def test_generated_captions_cover_the_hard_cases() -> None:
    joined = "".join(CAPTIONS)
    for piece in ['"', "``", "n't", "İ", "🐶", "\t", "\u00a0", "1,000", "...", "t-shirt", "(", "'s"]:
        assert piece in joined, piece
    assert len(set(CAPTIONS)) > 1000


@pytest.fixture
def stand_in_punkt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let word_tokenize run without the Punkt data download (absent here): use an untrained Punkt."""
    with pytest.raises(LookupError):  # documents why the stand-in is needed; fails once punkt is installed
        nltk.data.find("tokenizers/punkt_tab/english/")
    untrained = PunktSentenceTokenizer()
    monkeypatch.setattr(nltk.tokenize, "_get_punkt_tokenizer", lambda language="english": untrained)


@pytest.mark.usefixtures("stand_in_punkt")
def test_parity_with_word_tokenize_for_single_sentences() -> None:
    """word_tokenize itself (sentence split, then NLTKWordTokenizer) agrees wherever it sees one sentence."""
    compared = 0
    for caption in CAPTIONS[:400]:
        if len(nltk.tokenize.sent_tokenize(caption.lower())) != 1:
            continue
        assert [t.text for t in tokenize(caption)] == nltk.tokenize.word_tokenize(caption.lower()), caption
        compared += 1
    assert compared > 250


@pytest.mark.usefixtures("stand_in_punkt")
def test_trailing_whitespace_is_dropped_like_punkt_does() -> None:
    caption = "she'd' "
    assert official_tokenizer.tokenize(caption) == ["she", "'d", "'"]
    assert nltk.tokenize.word_tokenize(caption) == ["she'd", "'"]
    assert [t.text for t in tokenize(caption)] == ["she'd", "'"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a man in a t-shirt", ["a", "man", "in", "a", "t-shirt"]),
        ("I don't know", ["i", "do", "n't", "know"]),
        ('a sign that says "stop"', ["a", "sign", "that", "says", "``", "stop", "''"]),
        ("the cat's toy", ["the", "cat", "'s", "toy"]),
        ("the dogs' ball.", ["the", "dogs", "'", "ball", "."]),
        ("A cat, a dog.", ["a", "cat", ",", "a", "dog", "."]),
    ],
)
def test_examples(text: str, expected: list[str]) -> None:
    assert [t.text for t in tokenize(text)] == expected


def test_spans_point_into_the_original_text() -> None:
    text = 'A "Big" DOG'
    assert tokenize(text) == [
        Token("a", 0, 1), Token("``", 2, 3), Token("big", 3, 6), Token("''", 6, 7), Token("dog", 8, 11)
    ]


def test_spans_survive_lowercase_that_changes_length() -> None:
    text = "İSTANBUL İİ café's"
    assert len(text.lower()) == len(text) + 3  # each 'İ' lowers to 'i' + combining dot
    tokens = tokenize(text)
    assert [t.text for t in tokens] == ["i̇stanbul", "i̇i̇", "café", "'s"]
    assert [text[t.start:t.end] for t in tokens] == ["İSTANBUL", "İİ", "café", "'s"]


def test_final_sigma_depends_on_context() -> None:
    text = "ΟΔΟΣ:'s ΟΔΟΣ"
    tokens = tokenize(text)
    assert [t.text for t in tokens] == official_tokens(text) == ["οδοσ", ":", "'s", "οδος"]
    assert [text[t.start:t.end] for t in tokens] == ["ΟΔΟΣ", ":", "'s", "ΟΔΟΣ"]


def test_quotes_already_written_as_nltk_tokens() -> None:
    text = "``hi'' \"there\" ''you''"
    tokens = tokenize(text)
    assert [t.text for t in tokens] == official_tokens(text)
    assert [text[t.start:t.end] for t in tokens] == ["``", "hi", "''", '"', "there", '"', "''", "you", "''"]


def test_token_that_cannot_be_aligned_gets_an_empty_span() -> None:
    lowered = "a cat sits"
    assert list(_align(lowered, ["a", "zebra", "cat", "''", "sits"])) == [
        (0, 1), (2, 2), (2, 5), (6, 6), (6, 10)
    ]


def test_empty_and_whitespace_only_text_has_no_tokens() -> None:
    assert tokenize("") == []
    assert tokenize(" \t\n ") == []


# --- vocabulary -------------------------------------------------------------------------------------------

OFFICIAL_WORDS = {"dog": 7, "a": 5, "<pad>": 0, "cat": 4, "<end>": 2, "t-shirt": 8, "<start>": 1, "<unk>": 3,
                  "'s": 6}


def write_official(path: Path, word2idx: dict[str, int], **overrides: object) -> Path:
    """An official-format vocab file (idx2word keys are strings, as json.dump writes them)."""
    data: dict[str, object] = {
        "word2idx": word2idx,
        "idx2word": {str(i): w for w, i in reversed(list(word2idx.items()))},
        "idx": len(word2idx),
    }
    data.update(overrides)
    path.write_text(json.dumps(data))
    return path


def test_load_and_save_official_format(tmp_path: Path) -> None:
    vocab = Vocabulary.load(write_official(tmp_path / "vocab.json", OFFICIAL_WORDS))
    assert len(vocab) == vocab.idx == 9
    assert vocab.word2idx == OFFICIAL_WORDS
    assert vocab.idx2word[7] == "dog" and vocab.word(8) == "t-shirt"
    assert "cat" in vocab and "zebra" not in vocab
    assert vocab("cat") == vocab.lookup("cat") == 4 and vocab("zebra") == 3

    vocab.save(tmp_path / "saved.json")
    saved = json.loads((tmp_path / "saved.json").read_text())
    assert saved == {"word2idx": OFFICIAL_WORDS, "idx2word": {str(i): w for w, i in OFFICIAL_WORDS.items()},
                     "idx": 9}
    again = Vocabulary.load(tmp_path / "saved.json")
    assert again.word2idx == vocab.word2idx and again.idx2word == vocab.idx2word


def test_load_accepts_word2idx_only(tmp_path: Path) -> None:
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"word2idx": OFFICIAL_WORDS}))
    vocab = Vocabulary.load(path)
    assert vocab.idx2word == {i: w for w, i in OFFICIAL_WORDS.items()} and vocab.idx == 9


def with_entry(word: str, index: object) -> dict[str, object]:
    return {**OFFICIAL_WORDS, word: index}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", '"word2idx"'),
        (json.dumps({"word2idx": {w: i for w, i in OFFICIAL_WORDS.items() if i != 3}}), "<unk> is missing"),
        (json.dumps({"word2idx": {**OFFICIAL_WORDS, "<end>": 9, "zzz": 2}}), "<end> has index 9"),
        (json.dumps({"word2idx": with_entry("zzz", "nine")}), "not a non-negative integer"),
        (json.dumps({"word2idx": with_entry("zzz", 1.5)}), "not a non-negative integer"),
        (json.dumps({"word2idx": with_entry("zzz", 4)}), "index 4 is used by two words"),
        (json.dumps({"word2idx": with_entry("zzz", 12)}), "without gaps"),
        (json.dumps({"word2idx": OFFICIAL_WORDS, "idx2word": {"0": "<pad>", "4": "dog"}}), "disagree on the word of index 4"),
        (json.dumps({"word2idx": OFFICIAL_WORDS, "idx2word": {"x": "dog"}}), "key 1 of idx2word"),
        (json.dumps({"word2idx": OFFICIAL_WORDS, "idx": 100}), '"idx" is not 9'),
    ],
)
def test_load_rejects_broken_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "vocab.json"
    path.write_text(content)
    with pytest.raises(ScanVizError) as error:
        Vocabulary.load(path)
    text = str(error.value)
    assert message in text and path.name in text and "\n" not in text
    assert "zzz" not in text and "dog" not in text  # the file's words are never quoted


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScanVizError, match="does not exist"):
        Vocabulary.load(tmp_path / "nope.json")


def test_build_keeps_words_over_threshold_in_count_order() -> None:
    captions = ["A dog runs.", "a dog sits", "a cat sits.", "A DOG!", "a bird"]
    vocab = Vocabulary.build(captions, threshold=2)
    # a: 5, dog: 3, .: 2, sits: 2 (ties alphabetical); cat, runs, bird, ! appear once.
    assert vocab.word2idx == {**SPECIALS, "a": 4, "dog": 5, ".": 6, "sits": 7}
    assert list(Vocabulary.build(captions).word2idx) == [*SPECIALS, "a"]
    assert Vocabulary.build(reversed(captions), threshold=2).word2idx == vocab.word2idx
    with pytest.raises(ScanVizError):
        Vocabulary.build(captions, threshold=0)


def test_encode_adds_start_end_and_flags_unknown_words() -> None:
    vocab = Vocabulary.from_words(["a", "dog", "'s", "t-shirt"])
    encoded = vocab.encode("A dog's  zebra T-shirt")
    assert isinstance(encoded, EncodedCaption)
    assert encoded.ids == [1, 4, 5, 6, 3, 7, 2]
    assert [t.text for t in encoded.tokens] == ["a", "dog", "'s", "zebra", "t-shirt"]
    assert encoded.unknown == [False, False, False, True, False]

    only_unknown = vocab.encode("zebras everywhere")
    assert only_unknown.ids == [1, 3, 3, 2] and only_unknown.unknown == [True, True]
    assert [e.ids for e in vocab.encode_batch(["a dog", "dog"])] == [[1, 4, 5, 2], [1, 5, 2]]


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_encode_empty_sentence(text: str) -> None:
    with pytest.raises(ScanVizError, match="^the sentence is empty: type a few words$"):
        Vocabulary.from_words([]).encode(text)


def test_invalid_tables_and_indices_raise() -> None:
    with pytest.raises(ScanVizError, match="<pad> is missing"):
        Vocabulary({"cat": 0})
    with pytest.raises(ScanVizError, match="index 99 is not in the vocabulary"):
        Vocabulary.from_words(["cat"]).word(99)


def test_pad_ids() -> None:
    ids, lengths = pad_ids([[1, 4, 2], [1, 2], [1, 5, 6, 7, 2]])
    assert ids.dtype == np.int64 and lengths.dtype == np.int64
    assert ids.tolist() == [[1, 4, 2, 0, 0], [1, 2, 0, 0, 0], [1, 5, 6, 7, 2]]
    assert lengths.tolist() == [3, 2, 5]
    empty_ids, empty_lengths = pad_ids([])
    assert empty_ids.shape == (0, 0) and empty_lengths.shape == (0,)
