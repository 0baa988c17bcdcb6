"""CLIP BPE tokenisation, identical to open_clip's ``SimpleTokenizer``.

Cleaning (ftfy, HTML unescaping, whitespace folding, lower-casing) follows open_clip; the byte-level
BPE itself runs in Hugging Face ``tokenizers`` (Rust), built from the CLIP vocabulary file that
ships with clipserve (OpenAI's ``bpe_simple_vocab_16e6``, MIT licence).
"""

from __future__ import annotations

import gzip
import html
from functools import cache
from importlib import resources

import ftfy
import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

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


def clean_text(text: str) -> str:
    """open_clip's ``lower`` cleaning: fix mojibake, unescape HTML twice, fold whitespace, lower-case."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


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
        tokens = np.zeros((len(ids), width or self.context_length), dtype=np.int64)
        for row, seq in enumerate(ids):
            tokens[row, : len(seq)] = seq
        return tokens

    def __call__(self, texts: list[str], trim: bool = False) -> np.ndarray:
        ids = self.token_ids(texts)
        return self.pad(ids, max((len(i) for i in ids), default=2) if trim else None)
