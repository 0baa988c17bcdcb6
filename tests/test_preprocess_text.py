import numpy as np
import pytest

from clipserve.preprocess.text import ClipTokenizer
from tests.conftest import AWKWARD_TEXTS

MORE_TEXTS = [
    "Hello, World!! 123 4567",
    "x" * 500,
    "ÄÖÜ ß İstanbul ǅ",
    "١٢٣ arabic digits ۴",
    "Ｆｕｌｌｗｉｄｔｈ ｔｅｘｔ",
    "\u200b zero width space",
    "CamelCaseWords and snake_case_words",
    "a" * 3,
]


@pytest.mark.parametrize("context_length", [77, 76, 16])
def test_token_ids_equal_open_clip(context_length: int) -> None:
    import open_clip

    texts = AWKWARD_TEXTS + MORE_TEXTS
    reference = open_clip.SimpleTokenizer(context_length=context_length)(texts).numpy()
    ours = ClipTokenizer(context_length)(texts)
    assert ours.dtype == np.int64
    np.testing.assert_array_equal(ours, reference)


def test_truncation_keeps_end_token() -> None:
    tokenizer = ClipTokenizer(77)
    tokens = tokenizer(["word " * 200])
    assert tokens[0, -1] == tokenizer.end_id
    assert tokens[0, 0] == tokenizer.start_id


def test_empty_string_is_start_and_end_only() -> None:
    tokenizer = ClipTokenizer(77)
    assert tokenizer.token_ids([""]) == [[tokenizer.start_id, tokenizer.end_id]]


def test_trimmed_tokens_are_the_prefix_of_full_tokens() -> None:
    tokenizer = ClipTokenizer(77)
    texts = ["a cat", "a much longer caption about a dog in the park"]
    full, trimmed = tokenizer(texts), tokenizer(texts, trim=True)
    assert trimmed.shape[1] == max(len(ids) for ids in tokenizer.token_ids(texts)) < 77
    np.testing.assert_array_equal(full[:, : trimmed.shape[1]], trimmed)
    assert not full[:, trimmed.shape[1] :].any()
