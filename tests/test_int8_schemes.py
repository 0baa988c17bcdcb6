"""int8 in the scheme each CPU class computes exactly: u8s8 with VNNI or AMX, u8u8 on x86 without.

The choice is tested on each class by its ``/proc/cpuinfo`` flags. The accuracy is tested on an
AVX2-only CPU on any machine: ONNX Runtime picks its kernels by the CPUID instruction, and
``qemu-x86_64 -cpu EPYC-Milan-v1`` (installed by ``make setup``) answers it as a Zen 3 would, so the
u8s8 kernels there are the saturating AVX2 ones that lost accuracy on real Zen 3 machines.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clipserve.backends import precision
from clipserve.backends.precision import INT8_SCHEMES, derive_int8, int8_scheme, variant
from tests.conftest import AWKWARD_TEXTS, cosines

NAME = "ViT-B-32::openai"
BASE_FLAGS = {"sse2", "ssse3", "sse4_1", "sse4_2", "popcnt", "aes", "avx", "f16c", "fma", "bmi2", "avx2"}
AVX512 = {"avx512f", "avx512bw", "avx512vl"}
CPU_CLASSES = {
    "AMD Zen 3 (family 25, model 1)": (BASE_FLAGS, "u8u8"),
    "Intel Skylake-SP Xeon (AVX-512, no VNNI)": (BASE_FLAGS | AVX512, "u8u8"),
    "AMD Zen 4 (family 25, model 17)": (BASE_FLAGS | AVX512 | {"avx512_vnni", "avx512_bf16"}, "u8s8"),
    "AMD Zen 5 (family 26)": (BASE_FLAGS | AVX512 | {"avx512_vnni", "avx512_bf16", "avx_vnni"}, "u8s8"),
    "Intel Xeon Sapphire Rapids (AMX)": (BASE_FLAGS | AVX512 | {"avx512_vnni", "amx_int8"}, "u8s8"),
    "Intel Alder Lake (AVX-VNNI, no AVX-512)": (BASE_FLAGS | {"avx_vnni"}, "u8s8"),
}
EMULATED_CPU = "EPYC-Milan-v1"
"""QEMU's model of an AMD EPYC Zen 3: AVX2 and FMA, no AVX-512, no VNNI."""


@pytest.mark.parametrize("cpu", CPU_CLASSES)
def test_each_cpu_class_gets_the_scheme_it_computes_exactly(cpu: str, monkeypatch) -> None:
    flags, scheme = CPU_CLASSES[cpu]
    assert int8_scheme(flags) == scheme
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    assert int8_scheme() == scheme and variant("int8") == f"int8-{scheme}"
    assert variant("fp32") == "fp32" and variant("fp16") == "fp16"


def test_each_scheme_is_cached_apart_and_reported(
    random_model, cache_with_exports, monkeypatch, new_encoder
) -> None:
    """A cache shared by a Zen 3 and a Zen 4 holds both schemes side by side; each machine runs its
    own, and ``info()`` and ``/metrics``' model info say which."""
    checkpoint = random_model(NAME).checkpoint
    cache = cache_with_exports(NAME)
    runs = {}
    for cpu in ("AMD Zen 3 (family 25, model 1)", "AMD Zen 4 (family 25, model 17)"):
        flags, scheme = CPU_CLASSES[cpu]
        monkeypatch.setattr(precision, "cpu_flags", lambda flags=flags: flags)
        info = new_encoder(NAME, weights=checkpoint, cache_dir=cache, precision="int8").info()
        assert info["int8_scheme"] == scheme and info["weights"].endswith(f"/int8-{scheme}")
        meta = json.loads((Path(info["weights"]) / "clipserve.json").read_text())
        assert meta["int8_scheme"] == scheme
        runs[scheme] = info["weights"]
    assert runs["u8s8"] != runs["u8u8"]
    assert "int8_scheme" not in new_encoder(NAME, weights=checkpoint, cache_dir=cache).info()


def test_an_export_in_the_other_scheme_runs_and_says_so(
    random_model, cache_with_exports, tmp_path, monkeypatch, new_encoder, caplog
) -> None:
    """An int8 export made on a VNNI machine and copied to an AVX2-only one runs as given (the
    operator chose it) with a warning that says how to get the exact one."""
    checkpoint = random_model(NAME).checkpoint
    monkeypatch.setattr(precision, "cpu_flags", lambda: CPU_CLASSES["AMD Zen 4 (family 25, model 17)"][0])
    made = new_encoder(NAME, weights=checkpoint, cache_dir=cache_with_exports(NAME), precision="int8").info()
    copied = tmp_path / "copied"
    shutil.copytree(made["weights"], copied)
    monkeypatch.setattr(precision, "cpu_flags", lambda: CPU_CLASSES["AMD Zen 3 (family 25, model 1)"][0])
    info = new_encoder(NAME, weights=str(copied), precision="int8").info()
    assert info["int8_scheme"] == "u8s8"
    assert "this int8 export is u8s8, which loses accuracy on this CPU (no VNNI)" in caplog.text
    assert "derive int8 here" in caplog.text


TOWERS = r"""
import sys
import numpy as np
import onnxruntime as ort
export, inputs, towers = sys.argv[1], np.load(sys.argv[2]), sys.argv[3:]
options = ort.SessionOptions()
options.intra_op_num_threads = 1
out = {}
for tower in towers:
    session = ort.InferenceSession(f"{export}/{tower}.onnx", options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out[tower] = session.run(None, {name: inputs[name]})[0]
np.savez(f"{export}.out.npz", **out)
"""


def worst(vectors: np.ndarray, reference: np.ndarray) -> float:
    return cosines(vectors, reference).min()


def run_towers(python: list[str], inputs, runs: dict[str, tuple[str, ...]]) -> dict[str, dict]:
    """The vectors of each export's towers (``runs``: export → towers), all exports at once, each in
    its own ``python`` process (native, or under QEMU)."""
    started = {
        export: subprocess.Popen(
            [*python, "-c", TOWERS, export, str(inputs), *towers], stderr=subprocess.PIPE
        )
        for export, towers in runs.items()
    }
    for process in started.values():
        _, error = process.communicate(timeout=900)
        assert process.returncode == 0, error[-3000:]
    return {export: dict(np.load(f"{export}.out.npz")) for export in runs}


@pytest.mark.slow
def test_u8u8_is_exact_on_an_avx2_only_cpu_where_u8s8_is_not(onnx_export, photo_paths, tmp_path) -> None:
    """On the emulated Zen 3, u8u8 keeps cosine ≥ 0.999 to fp32 on photos and ≥ 0.998 on texts. u8s8
    loses accuracy there, and only there: the emulation really runs the AVX2 kernels."""
    from PIL import Image

    from clipserve.preprocess.image import ImagePreprocessor
    from clipserve.preprocess.text import ClipTokenizer
    from clipserve.zoo import get_spec

    qemu = shutil.which("qemu-x86_64")
    assert qemu, "qemu-user is not installed: run `make setup`"
    fp32 = onnx_export(NAME)
    exports = {scheme: str(derive_int8(Path(fp32), tmp_path / scheme, scheme)) for scheme in INT8_SCHEMES}
    preprocess = ImagePreprocessor(get_spec(NAME))
    pixels = np.stack([preprocess(Image.open(path)) for path in photo_paths[:3]]).astype(np.float32)
    tokenizer = ClipTokenizer()
    tokens = tokenizer.pad(tokenizer.token_ids(AWKWARD_TEXTS[:4])).astype(np.int64)
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, pixels=pixels, tokens=tokens)
    both = ("image", "text")
    native = run_towers([sys.executable], inputs, dict.fromkeys([fp32, *exports.values()], both))
    # Under emulation the u8s8 image tower alone shows the saturation; u8u8 runs both towers.
    emulated = run_towers(
        [qemu, "-cpu", EMULATED_CPU, sys.executable],
        inputs,
        {exports["u8s8"]: ("image",), exports["u8u8"]: both},
    )
    measured = {
        (where, scheme, tower): round(float(worst(results[exports[scheme]][tower], native[fp32][tower])), 5)
        for where, results in (("emulated", emulated), ("native", native))
        for scheme in exports
        for tower in both
        if tower in results[exports[scheme]]
    }
    assert measured["emulated", "u8u8", "image"] >= 0.999, measured
    assert measured["emulated", "u8u8", "text"] >= 0.998, measured
    assert measured["native", "u8s8", "image"] >= 0.999, measured
    assert measured["native", "u8s8", "text"] >= 0.998, measured
    assert measured["emulated", "u8s8", "image"] < measured["native", "u8s8", "image"] - 0.0005, measured
