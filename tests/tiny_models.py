"""Small random models of every family, in the Hugging Face Hub layout, with locally trained tokenizers.

The model hubs are unreachable in tests, so each family is rebuilt small: the same open_clip (or
M-CLIP) code with 2-layer towers, random weights from a fixed seed, and a tokenizer trained here
with ``tokenizers`` in the style of the real one (special tokens, post-processor, padding token).
A directory holds ``open_clip_config.json``, the weights and the tokenizer files, as on the hub.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from tests.conftest import AWKWARD_TEXTS

CORPUS = [
    *AWKWARD_TEXTS,
    "a photo of a cat sitting on a red sofa",
    "ein Foto einer Katze auf einem roten Sofa",
    "une photo d'un chat assis sur un canapé rouge",
    "赤いソファに座っている猫の写真",
    "一只猫坐在红色沙发上的照片",
    "фотография кошки на красном диване",
    "صورة قطة تجلس على أريكة حمراء",
    "고양이가 빨간 소파에 앉아 있는 사진",
    "an astronaut riding a horse on the moon, digital art",
    "the quick brown fox jumps over the lazy dog 0123456789",
]

TINY_TEXT = {"width": 64, "heads": 2, "layers": 2}
TINY_VISION = {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32, "head_width": 32}
TIMM_VISION = {
    "image_size": 224,
    "timm_model_name": "vit_tiny_patch16_224",
    "timm_model_pretrained": False,
    "timm_pool": "map",
    "timm_proj": "none",
}


@dataclass(frozen=True)
class TokenizerStyle:
    """How a family's tokenizer marks texts: its special tokens (in id order), the template that
    wraps a text, the pad token, and whether its model is WordPiece (BERT) or SentencePiece-like."""

    specials: tuple[str, ...]
    template: str
    pad: str
    wordpiece: bool = False
    lowercase: bool = False

    def config(self) -> dict:
        tokens = {"pad_token": self.pad, "unk_token": "[UNK]" if self.wordpiece else "<unk>"}
        if "</s>" in self.specials:
            tokens["eos_token"] = "</s>"
        if "<eos>" in self.specials:
            tokens["eos_token"] = "<eos>"
        if "[SEP]" in self.specials:
            tokens |= {"sep_token": "[SEP]", "cls_token": "[CLS]"}
        return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512, **tokens}


STYLES = {
    # SigLIP (T5 / mT5 vocabularies): EOS appended, padded with EOS itself
    "t5": TokenizerStyle(("<pad>", "</s>", "<unk>"), "$A </s>", "</s>"),
    # SigLIP2 (Gemma): EOS appended, a separate pad token
    "gemma": TokenizerStyle(("<pad>", "<eos>", "<bos>", "<unk>"), "$A <eos>", "<pad>"),
    # XLM-R, RoBERTa and M-CLIP, and xlm-v (MetaCLIP 2 worldwide)
    "xlmr": TokenizerStyle(("<s>", "<pad>", "</s>", "<unk>"), "<s> $A </s>", "<pad>"),
    # NLLB: the source language code first, EOS last
    "nllb": TokenizerStyle(("<s>", "<pad>", "</s>", "<unk>", "eng_Latn"), "eng_Latn $A </s>", "<pad>"),
    # BERT uncased (CLIPA) and cased (LaBSE)
    "bert": TokenizerStyle(("[PAD]", "[UNK]", "[CLS]", "[SEP]"), "[CLS] $A [SEP]", "[PAD]", True, True),
    "bert-cased": TokenizerStyle(("[PAD]", "[UNK]", "[CLS]", "[SEP]"), "[CLS] $A [SEP]", "[PAD]", True),
}


def train_tokenizer(
    style: str, directory: Path, vocab_size: int = 600, corpus: list[str] | None = None
) -> int:
    """Train a tokenizer of ``style`` on a small multilingual corpus (or ``corpus``) and save it in the
    hub layout (``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``); returns
    its vocabulary size."""
    kind = STYLES[style]
    directory.mkdir(parents=True, exist_ok=True)
    if kind.wordpiece:
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=kind.lowercase)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(kind.specials))
    else:  # SentencePiece-like: words marked by a leading "▁", merged into pieces
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(kind.specials))
    tokenizer.train_from_iterator((corpus or CORPUS) * 20, trainer)
    special_ids = [(token, tokenizer.token_to_id(token)) for token in kind.specials]
    tokenizer.post_processor = processors.TemplateProcessing(single=kind.template, special_tokens=special_ids)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = kind.config()
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    specials = {k: v for k, v in config.items() if k.endswith("_token")}
    (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=1))
    return tokenizer.get_vocab_size()


@dataclass(frozen=True)
class TinyFamily:
    """A zoo entry whose code path a tiny model exercises, and how to build that model."""

    zoo_name: str
    style: str
    text_cfg: dict
    hf_config: dict | None = None
    """A transformers config (``model_type`` and small sizes) for Hugging Face text towers."""


FAMILIES = {
    "siglip": TinyFamily(
        "ViT-B-16-SigLIP::webli",
        "t5",
        {
            "context_length": 64,
            "no_causal_mask": True,
            "pool_type": "last",
            "proj_bias": True,
            "norm_kwargs": {"eps": 1e-6},
            "hf_tokenizer_name": "timm/ViT-B-16-SigLIP",
            "tokenizer_kwargs": {"clean": "canonicalize"},
        },
    ),
    "siglip2": TinyFamily(
        "ViT-B-16-SigLIP2::webli",
        "gemma",
        {
            "context_length": 64,
            "no_causal_mask": True,
            "pool_type": "last",
            "proj_bias": True,
            "norm_kwargs": {"eps": 1e-6},
            "act_kwargs": {"approximate": "tanh"},
            "hf_tokenizer_name": "timm/ViT-B-16-SigLIP2",
            "tokenizer_kwargs": {"clean": "canonicalize"},
        },
    ),
    "clipa": TinyFamily(
        "ViT-L-14-CLIPA::datacomp1b",
        "bert",
        {
            "context_length": 32,
            "no_causal_mask": True,
            "pool_type": "last",
            "hf_tokenizer_name": "bert-base-uncased",
            "tokenizer_kwargs": {"strip_sep_token": True},
        },
    ),
    "worldwide": TinyFamily(
        "ViT-H-14-worldwide::metaclip2_worldwide",
        "xlmr",
        {"context_length": 77, "pool_type": "eos", "eos_id": 2, "hf_tokenizer_name": "facebook/xlm-v-base"},
    ),
    "xlmr": TinyFamily(
        "xlm-roberta-base-ViT-B-32::laion5b_s13b_b90k",
        "xlmr",
        {"hf_tokenizer_name": "xlm-roberta-base", "hf_proj_type": "mlp", "hf_pooler_type": "mean_pooler"},
        {
            "model_type": "xlm-roberta",
            "pad_token_id": 1,
            "max_position_embeddings": 130,
            "type_vocab_size": 1,
        },
    ),
    "nllb": TinyFamily(
        "nllb-clip-base::v1",
        "nllb",
        {
            "hf_tokenizer_name": "facebook/nllb-200-distilled-600M",
            "hf_proj_type": "linear",
            "hf_pooler_type": "cls_pooler",
        },
        {"model_type": "m2m_100", "pad_token_id": 1, "max_position_embeddings": 128, "scale_embedding": True},
    ),
}


def hf_config(kind: dict, vocab_size: int, directory: Path) -> Path:
    """A small transformers config of ``kind['model_type']`` saved as ``directory/config.json``."""
    import transformers

    model_type = kind["model_type"]
    sizes = (
        {
            "d_model": 64,
            "encoder_layers": 2,
            "decoder_layers": 1,
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 2,
            "encoder_ffn_dim": 128,
            "decoder_ffn_dim": 128,
        }
        if model_type == "m2m_100"
        else {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
    )
    config = transformers.AutoConfig.for_model(**kind, **sizes, vocab_size=vocab_size)
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    return directory


def build_open_clip(family: str, directory: Path):
    """A tiny random model of ``family`` saved in ``directory`` (hub layout); returns the open_clip
    model itself, the reference for the vectors."""
    import open_clip
    import torch

    tiny = FAMILIES[family]
    vocab = train_tokenizer(tiny.style, directory)
    text_cfg = {**tiny.text_cfg, **({} if tiny.hf_config else {**TINY_TEXT, "vocab_size": vocab})}
    if tiny.hf_config:
        text_cfg["hf_model_name"] = str(hf_config(tiny.hf_config, vocab, directory / "text-config"))
    model_cfg = {"embed_dim": 32, "vision_cfg": TINY_VISION, "text_cfg": text_cfg}
    if family in ("siglip", "siglip2"):  # SigLIP's image tower is timm's, with attention pooling
        model_cfg |= {
            "embed_dim": 192,
            "vision_cfg": TIMM_VISION,
            "custom_text": True,
            "init_logit_bias": -10,
        }
    (directory / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}})
    )
    torch.manual_seed(7)
    model = open_clip.create_model(f"local-dir:{directory}", pretrained_text=False).eval()
    torch.save(model.state_dict(), directory / "open_clip_pytorch_model.bin")
    return model


def open_clip_reference(family: str, directory: Path):
    """open_clip's own tokenizer for the tiny model in ``directory`` (its ``HFTokenizer``)."""
    from open_clip.tokenizer import HFTokenizer

    text_cfg = json.loads((directory / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
    return HFTokenizer(
        str(directory),
        context_length=text_cfg.get("context_length", 77),
        **text_cfg.get("tokenizer_kwargs", {}),
    )


def build_mclip(directory: Path):
    """A tiny M-CLIP text encoder (2-layer XLM-R) saved in ``directory`` as the released one is
    (``config.json``, ``pytorch_model.bin``, tokenizer files, the base model in ``base/``); returns
    ``(directory, the multilingual-clip package's model on the same weights)``, the reference."""
    import torch
    import transformers
    from multilingual_clip.Config_MCLIP import MCLIPConfig
    from multilingual_clip.pt_multilingual_clip import MultilingualCLIP

    vocab = train_tokenizer("xlmr", directory)
    base = hf_config(FAMILIES["xlmr"].hf_config, vocab, directory / "base")
    torch.manual_seed(11)
    transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(base)).save_pretrained(base)
    config = MCLIPConfig(modelBase=str(base), transformerDimSize=64, imageDimSize=512)
    model = MultilingualCLIP(config).eval()
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    (directory / "config.json").write_text(
        json.dumps(
            {"modelBase": str(base), "transformerDimensions": 64, "numDims": 512, "model_type": "M-CLIP"}
        )
    )
    return directory, model
