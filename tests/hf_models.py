"""Small random Hugging Face transformers models of every supported class, saved as a user's own
would be: ``save_pretrained`` of the model, its processor and its tokenizer, side by side.

Each is built from a seed, small enough to export in seconds, and with a real tokenizer: CLIP's BPE
(its vocabulary ships with clipserve), a BPE trained here for SigLIP, and a WordPiece vocabulary of
the test texts' characters for Chinese-CLIP (whose BERT tokenizer splits CJK characters apart).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

from clipserve.preprocess.text import clip_vocab
from tests.conftest import AWKWARD_TEXTS

PATCH = 8
SIDE = 32
TOWER = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
CLIP_PROCESSOR = {
    "size": {"shortest_edge": 40},  # not the crop: resize and crop differ, with odd margins
    "crop_size": {"height": SIDE, "width": SIDE},
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}
CHINESE_TEXTS = ["一只猫的照片", "杰尼龟", "妙蛙种子 and 小火龙", "皮卡丘!", ""]


def clip_tokenizer(directory: Path) -> transformers.PreTrainedTokenizerBase:
    """transformers' CLIP tokenizer on CLIP's own vocabulary and merges (49,408 tokens), proven alive:
    it tokenizes a sentence as open_clip does.

    transformers 5 takes the vocabulary and merges themselves (``vocab=``, ``merges=``) and silently
    ignores 4's ``vocab_file=``/``merges_file=``: given those, it has 2 tokens and every text becomes
    ``[0, 2, 2, ...]``.
    """
    import inspect

    import open_clip

    vocab, merges = clip_vocab()
    vocab = {**vocab, "<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    if "vocab" in inspect.signature(transformers.CLIPTokenizer.__init__).parameters:
        tokenizer = transformers.CLIPTokenizer(
            vocab=vocab, merges=[tuple(m) for m in merges], model_max_length=77
        )
    else:  # transformers 4
        (directory / "vocab.json").write_text(json.dumps(vocab))
        (directory / "merges.txt").write_text(
            "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
        )
        tokenizer = transformers.CLIPTokenizer(
            vocab_file=str(directory / "vocab.json"),
            merges_file=str(directory / "merges.txt"),
            model_max_length=77,
        )
        (directory / "vocab.json").unlink()
        (directory / "merges.txt").unlink()
    sentence = "a photo of a cat, on a mat!"
    expected = [t for t in open_clip.get_tokenizer("ViT-B-32")([sentence])[0].tolist() if t]
    assert len(tokenizer) == 49408 and tokenizer(sentence)["input_ids"] == expected, "the tokenizer is dead"
    return tokenizer


def trained_tokenizer(kind: str, max_length: int) -> transformers.PreTrainedTokenizerFast:
    """A small tokenizer trained on the test texts: ``bpe`` (SigLIP-like: ends in ``</s>``, padded
    with ``<pad>``) or ``wordpiece`` (BERT-like: ``[CLS] … [SEP]``, CJK characters split apart)."""
    corpus = [*AWKWARD_TEXTS, *CHINESE_TEXTS, "a photo of a cat", "a diagram of a bird"] * 4
    if kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        special = ["<pad>", "</s>", "<unk>"]
        tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=special))
        tokenizer.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))]
        )
        names = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    else:
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tokenizer.train_from_iterator(
            corpus, trainers.WordPieceTrainer(vocab_size=400, special_tokens=special)
        )
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            special_tokens=[(t, tokenizer.token_to_id(t)) for t in ("[CLS]", "[SEP]")],
        )
        names = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=max_length, **names
    )


def save(directory: Path, model, processor, tokenizer) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    if processor is not None:
        processor.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def clip(directory: Path, seed: int = 0, eos_token_id: int = 49407) -> Path:
    """A ``CLIPModel`` (``eos_token_id=2``: the pooling older hub configs use, at the highest id)."""
    torch.manual_seed(seed)
    config = transformers.CLIPConfig(
        text_config={**TOWER, "vocab_size": 49408, "eos_token_id": eos_token_id},
        vision_config={**TOWER, "image_size": SIDE, "patch_size": PATCH},
        projection_dim=16,
    )
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = clip_tokenizer(directory)
    processor = transformers.CLIPImageProcessorPil(**CLIP_PROCESSOR)
    return save(directory, transformers.CLIPModel(config), processor, tokenizer)


def clip_split(directory: Path, seed: int = 0) -> tuple[Path, Path]:
    """The split ``CLIPVisionModelWithProjection`` and ``CLIPTextModelWithProjection`` of one CLIP."""
    whole = transformers.CLIPModel.from_pretrained(clip(directory / "whole", seed))
    for tower in (whole.config.vision_config, whole.config.text_config):
        tower.projection_dim = whole.config.projection_dim
    vision = transformers.CLIPVisionModelWithProjection(whole.config.vision_config)
    vision.vision_model.load_state_dict(whole.vision_model.state_dict())
    vision.visual_projection.load_state_dict(whole.visual_projection.state_dict())
    text = transformers.CLIPTextModelWithProjection(whole.config.text_config)
    text.text_model.load_state_dict(whole.text_model.state_dict())
    text.text_projection.load_state_dict(whole.text_projection.state_dict())
    processor = transformers.CLIPImageProcessorPil(**CLIP_PROCESSOR)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory / "whole")
    return save(directory / "vision", vision, processor, None), save(
        directory / "text", text, None, tokenizer
    )


def siglip(directory: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    tokenizer = trained_tokenizer("bpe", 16)
    config = transformers.SiglipConfig(
        text_config={**TOWER, "vocab_size": len(tokenizer), "max_position_embeddings": 16},
        vision_config={**TOWER, "image_size": SIDE, "patch_size": PATCH},
    )
    processor = transformers.SiglipImageProcessorPil(size={"height": SIDE, "width": SIDE})
    return save(directory, transformers.SiglipModel(config), processor, tokenizer)


def siglip2(directory: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    tokenizer = trained_tokenizer("bpe", 16)
    config = transformers.Siglip2Config(
        text_config={**TOWER, "vocab_size": len(tokenizer), "max_position_embeddings": 16},
        vision_config={**TOWER, "patch_size": PATCH, "num_patches": 16},
    )
    processor = transformers.Siglip2ImageProcessorPil(patch_size=PATCH, max_num_patches=24)
    return save(directory, transformers.Siglip2Model(config), processor, tokenizer)


def chinese_clip(directory: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    tokenizer = trained_tokenizer("wordpiece", 24)
    config = transformers.ChineseCLIPConfig(
        # BERT's default initialisation (0.02) leaves its CLS vector almost the same for every text
        # (cosine 0.99998 between "a photo of a cat" and "dog"): too alike to test anything.
        text_config={
            **TOWER,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 24,
            "initializer_range": 0.5,
        },
        vision_config={**TOWER, "image_size": SIDE, "patch_size": PATCH},
        projection_dim=16,
    )
    processor = transformers.ChineseCLIPImageProcessorPil(**CLIP_PROCESSOR)
    return save(directory, transformers.ChineseCLIPModel(config), processor, tokenizer)
