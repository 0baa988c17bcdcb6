"""Text tokenisation, id-exact to open_clip's tokenizers, on Hugging Face ``tokenizers`` alone.

- :class:`ClipTokenizer`: CLIP's BPE (open_clip's ``SimpleTokenizer``), built from the vocabulary
  file that ships with clipserve (OpenAI's ``bpe_simple_vocab_16e6``, MIT licence).
- :class:`HfTokenizer`: a model's own ``tokenizer.json`` (SigLIP, XLM-R, NLLB, BERT, M-CLIP…), with
  open_clip's ``HFTokenizer`` cleaning, truncation to the context length and padding.

Cleaning (ftfy, HTML unescaping, whitespace folding, lower-casing or canonicalising) follows
open_clip; transformers is not needed (the ONNX path runs without torch).
"""

from __future__ import annotations

import gzip
import html
import json
import string
from collections.abc import Callable
from functools import cache
from importlib import resources
from pathlib import Path

import ftfy
import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

BUILTIN_TOKENIZER = "clip"
"""The zoo's name of CLIP's BPE tokenizer, which ships with clipserve."""
START_TOKEN = "<start_of_text>"
END_TOKEN = "<end_of_text>"
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2
# CLIP's word pattern: contractions, letter runs, single digits, runs of other non-space symbols.
WORD_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def byte_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def basic_clean(text: str) -> str:
    """Fix mojibake, unescape HTML twice, fold whitespace (open_clip's ``whitespace`` cleaning)."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split())


def clean_text(text: str) -> str:
    """open_clip's ``lower`` cleaning (CLIP's BPE): :func:`basic_clean`, then lower-case."""
    return basic_clean(text).lower()


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def canonicalize(text: str) -> str:
    """open_clip's ``canonicalize`` cleaning (SigLIP): underscores to spaces, ASCII punctuation
    removed, lower-cased, whitespace folded."""
    text = basic_clean(text).replace("_", " ").translate(_NO_PUNCTUATION).lower()
    return " ".join(text.split())


CLEANERS: dict[str, Callable[[str], str]] = {
    "whitespace": basic_clean,
    "lower": clean_text,
    "canonicalize": canonicalize,
    "none": lambda text: text,
}
"""Text cleaning by name: open_clip's three, and ``none`` (M-CLIP tokenises the raw text)."""


@cache
def clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's BPE vocabulary (token → id, without the two special tokens) and its merges, in rank order."""
    lines = gzip.decompress(resources.files("clipserve.assets").joinpath(VOCAB_FILE).read_bytes())
    merges = [tuple(line.split()) for line in lines.decode("utf-8").split("\n")[1 : NUM_MERGES + 1]]
    symbols = list(byte_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    return {token: i for i, token in enumerate(vocab_list)}, merges


@cache
def _bpe_tokenizer() -> Tokenizer:
    vocab, merges = clip_vocab()
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([START_TOKEN, END_TOKEN])
    return tokenizer


class ClipTokenizer:
    """Turns texts into ``int64 [n, L]`` token arrays, open_clip-exact.

    ``L`` is ``context_length`` unless ``trim`` is set, in which case ``L`` is the longest sequence of
    the batch (start and end tokens included); the first ``L`` columns equal the full-length result.
    """

    def __init__(self, context_length: int = 77) -> None:
        self.context_length = context_length
        self._tokenizer = _bpe_tokenizer()
        self.start_id = self._tokenizer.token_to_id(START_TOKEN)
        self.end_id = self._tokenizer.token_to_id(END_TOKEN)
        self.pad_id = 0

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Start + BPE ids + end per text, truncated to the context length with the end token kept."""
        encodings = self._tokenizer.encode_batch([clean_text(t) for t in texts], add_special_tokens=False)
        limit = self.context_length
        out = []
        for enc in encodings:
            ids = [self.start_id, *enc.ids, self.end_id]
            if len(ids) > limit:
                ids = ids[:limit]
                ids[-1] = self.end_id
            out.append(ids)
        return out

    def pad(self, ids: list[list[int]], width: int | None = None) -> np.ndarray:
        """Zero-pad id sequences into ``int64 [n, width]`` (default: the context length)."""
        return pad_ids(ids, width or self.context_length, self.pad_id)

    def __call__(self, texts: list[str], trim: bool = False) -> np.ndarray:
        ids = self.token_ids(texts)
        return self.pad(ids, max((len(i) for i in ids), default=2) if trim else None)


def pad_ids(ids: list[list[int]], width: int, pad_id: int, left: bool = False) -> np.ndarray:
    """Id sequences in ``int64 [n, width]``, each followed (``left``: preceded) by ``pad_id``."""
    tokens = np.full((len(ids), width), pad_id, dtype=np.int64)
    for row, seq in enumerate(ids):
        if left:
            tokens[row, width - len(seq) :] = seq
        else:
            tokens[row, : len(seq)] = seq
    return tokens


class HfTokenizer:
    """A Hugging Face fast tokenizer, used as open_clip's ``HFTokenizer`` uses it.

    The text is cleaned (``clean``), encoded with the tokenizer's own special tokens, truncated to
    ``context_length`` (the special tokens kept) and padded with the tokenizer's pad token; with
    ``strip_sep_token`` the separator becomes 0 (CLIPA).
    """

    def __init__(
        self, directory: Path, context_length: int, clean: str = "whitespace", strip_sep_token: bool = False
    ) -> None:
        self.context_length = context_length
        self.clean = CLEANERS[clean]
        self._tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        special = _special_tokens(directory)
        self.pad_id = self._id_of(special.get("pad_token"), directory, "pad")
        self.sep_id = self._id_of(special.get("sep_token"), directory, "sep") if strip_sep_token else None
        side = special.get("truncation_side", "right")
        self.padding_side = special.get("padding_side", "right")
        self._tokenizer.enable_truncation(max_length=context_length, direction=side)
        self._tokenizer.no_padding()

    def _id_of(self, token: str | None, directory: Path, role: str) -> int:
        token_id = self._tokenizer.token_to_id(token) if token is not None else None
        if token_id is None:
            raise ValueError(f"the tokenizer in {directory} has no {role} token")
        return token_id

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Ids per text with the tokenizer's special tokens, at most ``context_length`` long."""
        encodings = self._tokenizer.encode_batch([self.clean(t) for t in texts], add_special_tokens=True)
        ids = [encoding.ids for encoding in encodings]
        if self.sep_id is not None:
            ids = [[0 if i == self.sep_id else i for i in seq] for seq in ids]
        return ids

    def pad(self, ids: list[list[int]], width: int | None = None) -> np.ndarray:
        """Pad id sequences with the pad token into ``int64 [n, width]`` (default: the context length),
        on the tokenizer's padding side."""
        return pad_ids(ids, width or self.context_length, self.pad_id, self.padding_side == "left")

    def pad_with_mask(self, ids: list[list[int]], width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`pad`, and the ``int64`` attention mask: 1 over each sequence's own tokens."""
        padded = self.pad(ids, width)
        mask = pad_ids([[1] * len(seq) for seq in ids], padded.shape[1], 0, self.padding_side == "left")
        return padded, mask


def _special_tokens(directory: Path) -> dict:
    """Special tokens and options from ``special_tokens_map.json`` and ``tokenizer_config.json``
    (the latter wins, as in transformers); token entries may be strings or ``{"content": ...}``."""
    merged: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = directory / name
        if path.is_file():
            merged.update(json.loads(path.read_text()))
    return {k: v["content"] if isinstance(v, dict) and "content" in v else v for k, v in merged.items()}
