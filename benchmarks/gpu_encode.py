"""JPEG bytes → vectors on a device: clipserve's tensor path against open_clip's DataLoader pipeline.

In one run, on the same JPEG bytes (the shared photos, or 12 MP ones with ``--large``):
- open_clip's own pipeline: a DataLoader whose workers decode and resize with PIL, the model on the
  device (fp16 on CUDA, fp32 on the CPU);
- clipserve torch and onnx with the exact path (PIL on the decode threads);
- clipserve torch and onnx with ``tensor_preprocess`` (torchvision decode and resize on the device;
  on CUDA one nvJPEG call per batch, and ONNX Runtime reads the pixels in place by IO binding).

Prints images/s, the ratio to open_clip, and the GPU utilisation sampled during each run (CUDA,
through ``nvidia-smi``); then the models alone on pixels already on the device (open_clip against
clipserve's torch and onnx backends, ``--model-batch`` images a call); then where the time of one
batch goes on the tensor path (decode, resize, model). On a CPU-only machine ``--device cpu`` runs
the same pipelines in fp32 (a smoke run; the numbers that matter are a GPU's).

    python benchmarks/gpu_encode.py --device cuda [--images 4096] [--batch-size 256] [--workers 16]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import open_clip
import torch
from photos import jpeg_photos, large_jpeg_photos
from PIL import Image
from serving import GpuUtilisation, cpu_description

from clipserve.encoder import Encoder
from clipserve.preprocess.tensor_image import TensorImagePreprocessor
from clipserve.zoo import get_spec

MODEL = "ViT-B-32::openai"


class JpegDataset(torch.utils.data.Dataset):
    def __init__(self, jpegs: list[bytes], transform) -> None:
        self.jpegs, self.transform = jpegs, transform

    def __len__(self) -> int:
        return len(self.jpegs)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(Image.open(io.BytesIO(self.jpegs[index])))


def open_clip_rate(checkpoint: Path, jpegs: list[bytes], args: argparse.Namespace) -> float:
    spec = get_spec(MODEL)
    model = open_clip.create_model(spec.arch, pretrained=str(checkpoint), force_quick_gelu=spec.quick_gelu)
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    model = model.eval().to(args.device, dtype)
    transform = open_clip.image_transform(spec.image_size[0], is_train=False, mean=spec.mean, std=spec.std)
    loader = torch.utils.data.DataLoader(
        JpegDataset(jpegs, transform),
        batch_size=args.batch_size,
        num_workers=args.workers,
        pin_memory=args.device.startswith("cuda"),
    )
    with torch.inference_mode():
        start = time.perf_counter()
        for pixels in loader:
            model.encode_image(pixels.to(args.device, dtype, non_blocking=True)).float().cpu()
        return len(jpegs) / (time.perf_counter() - start)


def clipserve_rate(encoder: Encoder, jpegs: list[bytes]) -> float:
    encoder.encode_image(jpegs[:8])
    start = time.perf_counter()
    encoder.encode_image(jpegs)
    return len(jpegs) / (time.perf_counter() - start)


def model_rates(checkpoint: Path, encoders: dict[str, Encoder], args: argparse.Namespace) -> list:
    """Images/s of the image tower alone on normalised pixels already on the device, ``--model-batch``
    a call: open_clip's model (the reference) and each clipserve backend's ``encode_image_tensor``."""
    spec = get_spec(MODEL)
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    model = open_clip.create_model(spec.arch, pretrained=str(checkpoint), force_quick_gelu=spec.quick_gelu)
    model = model.eval().to(args.device, dtype)
    pixels = torch.randn(args.model_batch, 3, *spec.image_size, device=args.device)
    calls = {"open_clip model": lambda: model.encode_image(pixels.to(dtype)).float().cpu()}
    for name, encoder in encoders.items():
        calls[name] = lambda backend=encoder.pipeline.model.backend: backend.encode_image_tensor(pixels)
    rates = []
    with torch.inference_mode():
        for name, call in calls.items():
            call()  # warm-up (kernel selection, TensorRT engine build)
            start = time.perf_counter()
            for _ in range(args.model_repeats):
                call()
            rates.append((name, args.model_batch * args.model_repeats / (time.perf_counter() - start)))
    return rates


def split_one_batch(encoder: Encoder, jpegs: list[bytes], device: str) -> str:
    """Milliseconds of the tensor path's steps for one batch, synchronised on the device."""
    spec = encoder.spec
    tensors = TensorImagePreprocessor(
        spec.image_size, spec.resize_mode, spec.interpolation, spec.mean, spec.std, device
    )
    backend = encoder.pipeline.model.backend

    def sync() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter()

    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in jpegs]
    start = sync()
    decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    after_decode = sync()
    cropped = tensors.batch([tensors.resize_and_crop(image) for image in decoded])
    after_resize = sync()
    backend.encode_image_tensor(cropped)
    after_model = sync()
    return (
        f"decode {1000 * (after_decode - start):.0f} ms, resize + crop + normalise "
        f"{1000 * (after_resize - after_decode):.0f} ms, model {1000 * (after_model - after_resize):.0f} ms "
        f"for {len(jpegs)} images"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=16, help="open_clip's DataLoader workers")
    parser.add_argument("--large", action="store_true", help="12 MP photos instead of the shared ones")
    parser.add_argument("--model-batch", type=int, default=1024, help="images a call, models alone")
    parser.add_argument("--model-repeats", type=int, default=10, help="calls timed, models alone")
    args = parser.parse_args()

    jpegs = large_jpeg_photos(args.images) if args.large else jpeg_photos(args.images)
    precision = "fp16" if args.device.startswith("cuda") else "fp32"
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else cpu_description()
    what = f"{MODEL} {precision}, {len(jpegs)} JPEGs, batch {args.batch_size}"
    print(f"{time.strftime('%Y-%m-%d')}, {where}; {what}\n")
    workdir = Path(tempfile.mkdtemp(prefix="clipserve-gpu-"))
    checkpoint = workdir / "ViT-B-32.pt"
    torch.manual_seed(0)
    torch.save(open_clip.create_model("ViT-B-32", force_quick_gelu=True).state_dict(), checkpoint)

    rows = []
    with GpuUtilisation(args.device) as gpu:
        reference = open_clip_rate(checkpoint, jpegs, args)
    rows.append(("open_clip, DataLoader of PIL workers", reference, gpu.mean))
    encoders: dict[str, Encoder] = {}
    for name, backend, tensor in (
        ("clipserve torch, exact path", "torch", False),
        ("clipserve torch, tensor_preprocess", "torch", True),
        ("clipserve onnx, exact path", "onnx", False),
        ("clipserve onnx, tensor_preprocess", "onnx", True),
    ):
        encoder = Encoder(
            MODEL,
            backend=backend,
            device=args.device,
            precision=precision,
            weights=checkpoint,
            cache_dir=workdir,
            batch_size=args.batch_size,
            tensor_preprocess=tensor,
        )
        with GpuUtilisation(args.device) as gpu:
            rate = clipserve_rate(encoder, jpegs)
        rows.append((name, rate, gpu.mean))
        if tensor:
            encoders[f"clipserve {backend} model"] = encoder
            if backend == "torch":
                split = split_one_batch(encoder, jpegs[: args.batch_size], args.device)
        else:
            encoder.close()
    print("| pipeline | images/s | × open_clip | GPU utilisation |\n| --- | ---: | ---: | ---: |")
    for name, rate, utilisation in rows:
        print(f"| {name} | {rate:.1f} | {rate / reference:.2f} | {utilisation} |")
    print(f"\nModels alone, {precision}, {args.model_batch} images a call:\n")
    print("| model | images/s | × open_clip |\n| --- | ---: | ---: |")
    models = model_rates(checkpoint, encoders, args)
    for name, rate in models:
        print(f"| {name} | {rate:.1f} | {rate / models[0][1]:.2f} |")
    print(f"\nTensor path, one batch: {split}")
    for encoder in encoders.values():
        encoder.close()


if __name__ == "__main__":
    main()
