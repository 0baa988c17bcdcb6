import pytest

from clipserve.errors import UnknownModel
from clipserve.zoo import DEFAULT_MODEL, get_spec, list_models

# The CLIPOnnxEncoder table: architecture → output dimension.
CLIP_ONNX_TABLE = {
    "RN50": 1024,
    "RN101": 512,
    "RN50x4": 640,
    "RN50x16": 768,
    "RN50x64": 1024,
    "ViT-B-32": 512,
    "ViT-B-16": 512,
    "ViT-B-16-plus-240": 640,
    "ViT-L-14": 768,
    "ViT-L-14-336": 768,
    "ViT-H-14": 1024,
    "ViT-g-14": 1024,
}


@pytest.mark.parametrize(("arch", "dim"), CLIP_ONNX_TABLE.items())
def test_clip_onnx_table_dims(arch: str, dim: int) -> None:
    spec = get_spec(arch)
    assert spec.dim == dim
    assert spec.arch == arch


def test_every_open_clip_pretrained_pair_is_listed_and_m_clip_besides() -> None:
    import open_clip

    names = {spec.name for spec in list_models() if spec.family == "open_clip"}
    assert names == {f"{arch}::{tag}" for arch, tag in open_clip.list_pretrained()}
    mclip = {spec.name: spec.dim for spec in list_models() if spec.family == "mclip"}
    assert mclip == {
        "M-CLIP/XLM-Roberta-Large-Vit-B-32": 512,
        "M-CLIP/XLM-Roberta-Large-Vit-L-14": 768,
        "M-CLIP/XLM-Roberta-Large-Vit-B-16Plus": 640,
        "M-CLIP/LABSE-Vit-L-14": 768,
    }


def test_m_clip_pairs_the_image_towers_of_clip_as_service() -> None:
    pairs = {s.tag: (s.image_model, s.text_base) for s in list_models() if s.family == "mclip"}
    assert pairs == {
        "XLM-Roberta-Large-Vit-B-32": ("ViT-B-32::openai", "xlm-roberta-large"),
        "XLM-Roberta-Large-Vit-L-14": ("ViT-L-14::openai", "xlm-roberta-large"),
        "XLM-Roberta-Large-Vit-B-16Plus": ("ViT-B-16-plus-240::laion400m_e31", "xlm-roberta-large"),
        "LABSE-Vit-L-14": ("ViT-L-14::openai", "sentence-transformers/LaBSE"),
    }
    spec = get_spec("m-clip/xlm-roberta-large-vit-b-16plus")
    assert spec.image_size == (240, 240) and spec.dim == get_spec("ViT-B-16-plus-240::laion400m_e31").dim
    assert get_spec("M-CLIP::LABSE-Vit-L-14").name == "M-CLIP/LABSE-Vit-L-14"


def test_entries_match_open_clip_configs() -> None:
    import open_clip

    for spec in list_models():
        if spec.family != "open_clip":
            continue
        cfg = open_clip.get_model_config(spec.arch)
        pretrained = open_clip.get_pretrained_cfg(spec.arch, spec.tag)
        assert spec.dim == cfg["embed_dim"], spec.name
        assert spec.context_length == cfg["text_cfg"].get("context_length", 77), spec.name
        assert spec.mean == tuple(pretrained["mean"]), spec.name
        assert spec.interpolation == pretrained["interpolation"], spec.name
        assert spec.licence


def test_default_and_named_entries() -> None:
    spec = get_spec()
    assert spec.name == DEFAULT_MODEL == "ViT-B-32::openai"
    assert spec.image_size == (224, 224) and spec.context_length == 77
    assert spec.quick_gelu and spec.licence == "MIT"
    assert get_spec("ViT-L-14::laion2b_s32b_b82k").dim == 768
    assert get_spec("ViT-L-14-336::openai").image_size == (336, 336)


def test_quickgelu_variants_resolve_without_the_suffix() -> None:
    spec = get_spec("ViT-B-32::metaclip_400m")
    assert spec.quick_gelu
    yfcc = get_spec("RN50::yfcc15m")
    assert yfcc.quick_gelu and yfcc.arch.startswith("RN50")
    assert get_spec("RN50-quickgelu::yfcc15m").quick_gelu
    assert not get_spec("ViT-B-32::laion2b_s34b_b79k").quick_gelu


def test_names_are_case_insensitive_and_accept_openai_slashes() -> None:
    assert get_spec("vit-b/32").name == "ViT-B-32::openai"
    assert get_spec("VIT-B-32::OPENAI").name == "ViT-B-32::openai"


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(UnknownModel, match=r"ViT-B-33::openai.*Did you mean: ViT-B-32::openai"):
        get_spec("ViT-B-33::openai")


@pytest.mark.parametrize(
    ("name", "trim"),
    [
        ("ViT-B-32::openai", "argmax"),
        ("RN50::openai", "argmax"),
        ("coca_ViT-B-32::laion2b_s13b_b90k", "none"),  # a cls token is appended
        ("ViT-B-16-SigLIP::webli", "none"),  # no mask, pooled at the last position: pads matter
        ("ViT-L-14-CLIPA::datacomp1b", "none"),
        ("ViT-H-14-worldwide::metaclip2_worldwide", "eos"),
        ("xlm-roberta-base-ViT-B-32::laion5b_s13b_b90k", "mask"),
        ("nllb-clip-base::v1", "mask"),
    ],
)
def test_exact_trimming_is_derived_from_the_tower(name, trim) -> None:
    spec = get_spec(name)
    assert spec.text_trim == trim and spec.text_truncatable == (trim != "none")


def test_hf_tokenizer_facts_come_from_the_configs() -> None:
    siglip = get_spec("ViT-SO400M-14-SigLIP::webli")
    assert (siglip.tokenizer, siglip.tokenizer_clean, siglip.context_length) == (
        "timm/ViT-B-16-SigLIP",
        "canonicalize",
        16,
    )
    assert get_spec("ViT-L-14-CLIPA::datacomp1b").strip_sep_token
    assert get_spec("nllb-clip-base::v1").hf_text_model == "facebook/nllb-200-distilled-600M"
    families = {spec.family for spec in list_models()}
    assert families == {"open_clip", "mclip", "audioclip"}


@pytest.mark.parametrize(
    ("other_name", "name"),
    [
        ("ViT-B/32", "ViT-B-32::openai"),
        ("ViT-L/14@336px", "ViT-L-14-336::openai"),
        ("RN50x4", "RN50x4::openai"),
        ("openai/clip-vit-base-patch32", "ViT-B-32::openai"),
        ("openai/clip-vit-large-patch14-336", "ViT-L-14-336::openai"),
        ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "ViT-H-14::laion2b_s32b_b79k"),
        ("hf-hub:laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "ViT-H-14::laion2b_s32b_b79k"),
    ],
)
def test_openai_and_hugging_face_names_resolve(other_name, name) -> None:
    assert get_spec(other_name).name == name


def test_a_near_miss_of_a_hugging_face_name_suggests_the_model() -> None:
    with pytest.raises(UnknownModel, match="Did you mean: ViT-B-32::openai"):
        get_spec("openai/clip-vit-base-patch33")
