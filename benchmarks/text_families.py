"""Text speed of the Hugging Face tokenizer families against their reference pipelines, in one process.

Run through ``python benchmarks/cpu_encode.py --families``. Random weights at the released sizes
(hubs are unreachable here), with tokenizers trained on the fly in each family's style on the
captions' words (about one token a word, as the real multilingual vocabularies give for these);
their vocabularies are small, so embedding tables are small too, which changes no per-token cost.
Captions mix lengths as an image index's do: most of 3 to 20 words, one in twenty of 40 to 80.

- **M-CLIP** (XLM-Roberta-Large-Vit-B-32): the reference is what its users ran (the
  ``multilingual-clip`` forward, clip-as-service's tokenizer call): transformers on torch, the whole
  list padded to its longest text, run in batches. clipserve groups texts of similar length and pads
  each batch only to its own longest.
- **SigLIP** (ViT-B-16-SigLIP): open_clip's own pipeline. The tower has no padding mask and pools
  its last position, so no text may be cut short: clipserve's gain is the runtime alone.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tokenizer trainer of the tests
from tests.tiny_models import train_tokenizer

WORDS = """a photo of the small large red blue green old young man woman child dog cat bird horse car
bike street city park beach mountain river table kitchen ein Foto einer Katze une photo d'un chien el
perro la playa 赤い 猫 写真 一只 猫 照片 фотография кошки صورة قطة 고양이 사진 sitting standing running
holding next to near on in with under over wooden white black two three people group playing walking
field snow sunset""".split()


def mixed_captions(count: int, seed: int = 3) -> list[str]:
    """Captions as an image index holds them: most of 3 to 20 words, one in twenty of 40 to 80."""
    rng = random.Random(seed)
    lengths = [rng.randint(40, 80) if rng.random() < 0.05 else rng.randint(3, 20) for _ in range(count)]
    return [" ".join(rng.choices(WORDS, k=length)) for length in lengths]


def rate(encode, texts: list[str]) -> tuple[float, np.ndarray]:
    encode(texts[:16])
    start = time.perf_counter()
    vectors = encode(texts)
    return len(texts) / (time.perf_counter() - start), vectors


def _cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def mclip_rows(workdir: Path, texts: list[str], batch: int) -> list[tuple[str, float, float]]:
    import transformers
    from multilingual_clip.Config_MCLIP import MCLIPConfig
    from multilingual_clip.pt_multilingual_clip import MultilingualCLIP

    from clipserve.encoder import Encoder
    from clipserve.hf_configs import config_dir

    name = "M-CLIP/XLM-Roberta-Large-Vit-B-32"
    directory = workdir / "mclip"
    vocab = train_tokenizer("xlmr", directory, vocab_size=2000, corpus=texts)
    base_config = transformers.AutoConfig.from_pretrained(config_dir("xlm-roberta-large"))
    base_config.vocab_size = vocab
    base = workdir / "xlm-roberta-large"
    torch.manual_seed(0)
    transformers.AutoModel.from_config(base_config).save_pretrained(base)
    reference = MultilingualCLIP(
        MCLIPConfig(modelBase=str(base), transformerDimSize=1024, imageDimSize=512)
    ).eval()
    torch.save(reference.state_dict(), directory / "pytorch_model.bin")
    config = {"modelBase": str(base), "transformerDimensions": 1024, "numDims": 512, "model_type": "M-CLIP"}
    (directory / "config.json").write_text(json.dumps(config))
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    image = workdir / "vit-b-32.pt"
    if not image.exists():
        import open_clip

        torch.save(open_clip.create_model("ViT-B-32", force_quick_gelu=True).state_dict(), image)

    @torch.inference_mode()
    def reference_encode(batch_texts: list[str]) -> np.ndarray:
        tokens = tokenizer(batch_texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        out = []
        for start in range(0, len(batch_texts), batch):
            part = {key: value[start : start + batch] for key, value in tokens.items()}
            hidden = reference.transformer(**part)[0]
            mask = part["attention_mask"].unsqueeze(2)
            out.append(reference.LinearTransformation((hidden * mask).sum(1) / mask.sum(1)))
        return torch.nn.functional.normalize(torch.cat(out), dim=-1).numpy()

    torch_threads = torch.get_num_threads()
    base_rate, expected = rate(reference_encode, texts)
    rows = [("transformers + multilingual-clip (torch fp32), padded to the list's longest", base_rate, 1.0)]
    for backend, precision in (("torch", "fp32"), ("onnx", "fp32"), ("onnx", "int8")):
        encoder = Encoder(
            name,
            backend=backend,
            precision=precision,
            weights=directory,
            image_weights=image,
            cache_dir=workdir / "cache",
            batch_size=batch,
        )
        per_s, vectors = rate(encoder.encode_text, texts)
        rows.append((f"clipserve {backend} {precision}", per_s, _cosine_min(vectors, expected)))
        encoder.close()
    torch.set_num_threads(torch_threads)
    return rows


def siglip_rows(workdir: Path, texts: list[str], batch: int) -> list[tuple[str, float, float]]:
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    from clipserve.encoder import Encoder

    name = "ViT-B-16-SigLIP::webli"
    directory = workdir / "siglip-tokenizer"
    train_tokenizer("t5", directory, vocab_size=2000, corpus=texts)
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16-SigLIP").eval()
    checkpoint = workdir / "siglip.pt"
    torch.save(model.state_dict(), checkpoint)
    tokenizer = HFTokenizer(str(directory), context_length=64, clean="canonicalize")

    @torch.inference_mode()
    def reference_encode(batch_texts: list[str]) -> np.ndarray:
        out = [
            model.encode_text(tokenizer(batch_texts[i : i + batch]))
            for i in range(0, len(batch_texts), batch)
        ]
        return torch.nn.functional.normalize(torch.cat(out), dim=-1).numpy()

    base_rate, expected = rate(reference_encode, texts)
    rows = [("open_clip (torch fp32)", base_rate, 1.0)]
    for precision in ("fp32", "int8"):
        encoder = Encoder(
            name,
            weights=checkpoint,
            tokenizer=directory,
            precision=precision,
            cache_dir=workdir / "cache",
            batch_size=batch,
        )
        per_s, vectors = rate(encoder.encode_text, texts)
        rows.append((f"clipserve onnx {precision}", per_s, _cosine_min(vectors, expected)))
        encoder.close()
    return rows


def run(count: int, batch: int) -> None:
    texts = mixed_captions(count)
    with tempfile.TemporaryDirectory(prefix="clipserve-families-") as workdir:
        for title, rows in (
            ("M-CLIP/XLM-Roberta-Large-Vit-B-32, text", mclip_rows(Path(workdir), texts, batch)),
            ("ViT-B-16-SigLIP::webli, text", siglip_rows(Path(workdir), texts, batch)),
        ):
            tokens = [len(text.split()) for text in texts]
            print(
                f"\n### {title} ({count} captions of {min(tokens)} to {max(tokens)} words, batch {batch})\n"
            )
            print("| pipeline | texts/s | × | cosine to the reference |\n| --- | ---: | ---: | ---: |")
            base = rows[0][1]
            for pipeline, per_s, cosine in rows:
                shown = "reference" if pipeline == rows[0][0] else f"{cosine:.6f}"
                print(f"| {pipeline} | {per_s:.1f} | {per_s / base:.2f} | {shown} |")
