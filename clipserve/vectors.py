"""Operations on embedding rows, below every other module: unit normalisation and CLIP's rank
scores."""

from __future__ import annotations

import numpy as np


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(np.float32).tiny)


def clip_scores(query: np.ndarray, candidates: np.ndarray, logit_scale: float | np.ndarray):
    """``(order best first, clip_score, cosine)``: softmax over candidates of ``logit_scale × cosine``."""
    cosines = candidates @ query
    logits = np.asarray(logit_scale, dtype=np.float64) * cosines.astype(np.float64)
    scores = np.exp(logits - logits.max())
    scores /= scores.sum()
    return np.argsort(-scores, kind="stable"), scores, cosines
