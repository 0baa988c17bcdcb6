"""The JSON answers of routes that return vectors."""

import base64

import numpy as np
import orjson
from fastapi.responses import Response


def json_response(content: object) -> Response:
    """JSON with numpy arrays serialised natively (orjson): vectors are most of every answer."""
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def openai_embeddings(model: str, vectors: np.ndarray, tokens: list[int], encoding_format: str) -> dict:
    """OpenAI's embeddings answer: ``base64`` sends each vector as little-endian float32 bytes."""
    if encoding_format == "base64":
        data = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
    else:
        data = list(vectors)
    return {
        "object": "list",
        "data": [{"object": "embedding", "embedding": e, "index": i} for i, e in enumerate(data)],
        "model": model,
        "usage": {"prompt_tokens": sum(tokens), "total_tokens": sum(tokens)},
    }
