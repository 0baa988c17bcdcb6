"""Operations on embedding rows, below every other module: unit normalisation, CLIP's rank
scores, and the one name of a rank result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RankedMatch:
    """One candidate of a ranking (``Encoder.rank``, ``Client.rank``, ``/rank``), best first."""

    index: int
    """Position of the candidate in the list given to ``rank``."""
    clip_score: float
    """Softmax over the candidates of ``logit_scale × cosine`` (sums to 1 over all candidates)."""
    cosine: float
    candidate: Any = None
    """The candidate as given (on the server's answer, which does not echo them: None)."""


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
