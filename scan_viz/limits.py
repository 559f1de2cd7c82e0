"""What one request may ask for: every limit on user input, and the check that enforces it.

The app (typed text, deep links, uploads), the command line and the library's own entry points call these
checks, so a value is refused with the same one-line message wherever it comes from. The limits, and why:

- A sentence has at most :data:`MAX_WORDS` words (tokens, as the model reads them) and
  :data:`MAX_SENTENCE_CHARS` characters. Captions in the SCAN datasets average 10-12 words; every word gets
  its own attention panel, and the matplotlib panel grid (downloads, ``scan-viz explain``) costs about 0.08 s
  a word on a 2-core CPU, so 64 words is already a 5-second figure. The character cap bounds the tokeniser's
  work before a single token is made (64 long words with punctuation fit in 1,000 characters).
- ``lambda_softmax`` and ``lambda_lse`` are finite and within :data:`LAMBDA_RANGE`. The paper's values are
  4-20. Below 0.5 the attention of normalised similarities (|x| <= 1) is close to uniform and LogSumExp's
  ``log(n) / lambda`` term swamps the score; above 50, ``exp(lambda * x)`` nears float32's overflow at 88.
- An image has at most :data:`MAX_IMAGE_PIXELS` pixels and :data:`MAX_IMAGE_SIDE` pixels a side, checked
  from its header before any pixel is decoded (:func:`scan_viz.regions.images.load_image`): the detector looks at a
  few hundred pixels, and a 25-megapixel decode is already 75 MB.

What a *file* may expand to once read (zip members, array headers, JSON depth, regions per image, one load's
total) is bounded by the readers of :mod:`scan_viz.safe_files`, where those caps and their reasons are listed.

Nothing heavy is imported at module level: the command line checks its arguments before it loads torch, so
a bad value is answered in about a second.
"""
from __future__ import annotations


from scan_viz.errors import ScanVizError

MAX_WORDS = 64
MAX_SENTENCE_CHARS = 1_000
LAMBDA_RANGE = (0.5, 50.0)
MAX_IMAGE_PIXELS = 25_000_000
MAX_IMAGE_SIDE = 12_000


def check_sentence(text: str) -> str:
    """``text`` stripped, or ScanVizError when it is empty, too long or has too many words.

    The character cap is checked first, so a pasted book is refused without being tokenised.
    """
    text = (text or "").strip()
    if not text:
        from scan_viz.text import EMPTY_SENTENCE_MESSAGE

        raise ScanVizError(EMPTY_SENTENCE_MESSAGE)
    if len(text) > MAX_SENTENCE_CHARS:
        raise ScanVizError(f"the sentence is {len(text):,} characters long; the limit is {MAX_SENTENCE_CHARS:,} "
                           f"characters ({MAX_WORDS} words): shorten it")
    from scan_viz.text import tokenize

    n_words = len(tokenize(text))
    if n_words > MAX_WORDS:
        raise ScanVizError(f"the sentence has {n_words} words; the limit is {MAX_WORDS} words: shorten it")
    return text


def check_device(device: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``; ScanVizError when CUDA is asked for and this machine has none."""
    if device != "cpu" and not device.startswith("cuda"):
        raise ScanVizError(f"--device must be cpu or cuda, got {device!r}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ScanVizError("--device cuda was asked for but no CUDA GPU is available: use --device cpu")
    return device
