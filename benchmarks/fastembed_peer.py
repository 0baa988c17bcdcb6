"""fastembed in an interpreter of its own, for ``cpu_encode.py``: fastembed needs huggingface_hub < 2,
transformers 5 (in clipserve's venv) ≥ 2.4, so it runs from a venv of its own.

    VENV/bin/python benchmarks/fastembed_peer.py VISION_DIR TEXT_DIR BATCH

The two directories are fastembed's layouts of ``Qdrant/clip-ViT-B-32-vision`` and ``-text``,
loaded with ``specific_model_path``. Requests and answers are JSON lines on stdin and stdout:
once its imports are done it answers ``{"status": "ok"}``; ``{"kind": "load"}`` builds both models;
``{"kind": "images", "items": [base64 JPEG]}`` and ``{"kind": "texts", "items": [str]}`` answer
``{"status": "ok", "shape": [n, dim], "vectors": base64 float32}``; a failure answers
``{"status": "error", "trace": ...}``. It ends when stdin closes.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import traceback

import numpy as np
from fastembed import ImageEmbedding, TextEmbedding
from PIL import Image


def main() -> None:
    vision, text, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever else prints goes to stderr, not into the answers
    models: dict = {}

    def handle(kind: str, items: list | None) -> dict:
        if kind == "load":
            models["images"] = ImageEmbedding("Qdrant/clip-ViT-B-32-vision", specific_model_path=vision)
            models["texts"] = TextEmbedding("Qdrant/clip-ViT-B-32-text", specific_model_path=text)
            return {}
        if kind == "images":
            items = [Image.open(io.BytesIO(base64.b64decode(data))) for data in items]
        vectors = np.stack(list(models[kind].embed(items, batch_size=batch))).astype(np.float32)
        return {"shape": list(vectors.shape), "vectors": base64.b64encode(vectors.tobytes()).decode()}

    def answer(message: dict) -> None:
        answers.write(json.dumps(message) + "\n")
        answers.flush()

    answer({"status": "ok"})
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer({"status": "ok", **handle(request["kind"], request.get("items"))})
        except Exception:
            answer({"status": "error", "trace": traceback.format_exc()})


if __name__ == "__main__":
    main()
