"""fastembed in an interpreter of its own, for ``cpu_encode.py``: fastembed needs huggingface_hub < 2,
transformers 5 (in clipserve's venv) ≥ 2.4, so it runs from a venv of its own.

    VENV/bin/python benchmarks/fastembed_peer.py VISION_DIR TEXT_DIR BATCH

The two directories are fastembed's layouts of ``Qdrant/clip-ViT-B-32-vision`` and ``-text``,
loaded with ``specific_model_path``. Requests and answers are pickled tuples on stdin and stdout:
once its imports are done it answers ``("ok", None)``; ``("load",)`` builds both models;
``("images", [JPEG bytes])`` and ``("texts", [str])`` answer ``("ok", (shape, float32 bytes))``;
a failure answers ``("error", traceback)``. It ends when stdin closes.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import traceback

import numpy as np
from fastembed import ImageEmbedding, TextEmbedding
from PIL import Image


def main() -> None:
    vision, text, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever else prints goes to stderr, not into the answers
    requests = sys.stdin.buffer
    models: dict = {}

    def handle(kind: str, *payload: list) -> tuple | None:
        if kind == "load":
            models["images"] = ImageEmbedding("Qdrant/clip-ViT-B-32-vision", specific_model_path=vision)
            models["texts"] = TextEmbedding("Qdrant/clip-ViT-B-32-text", specific_model_path=text)
            return None
        items = payload[0]
        if kind == "images":
            items = [Image.open(io.BytesIO(data)) for data in items]
        vectors = np.stack(list(models[kind].embed(items, batch_size=batch))).astype(np.float32)
        return vectors.shape, vectors.tobytes()

    pickle.dump(("ok", None), answers)
    answers.flush()
    while True:
        try:
            request = pickle.load(requests)
        except EOFError:
            return
        try:
            answer = ("ok", handle(*request))
        except Exception:
            answer = ("error", traceback.format_exc())
        pickle.dump(answer, answers)
        answers.flush()


if __name__ == "__main__":
    main()
