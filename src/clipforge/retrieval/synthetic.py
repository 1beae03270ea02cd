"""Embedding-shaped test vectors, for index tests and benchmarks (real CLIP embeddings are not needed)."""

from __future__ import annotations

import numpy as np

__all__ = ["synthetic_embeddings"]


def synthetic_embeddings(n: int, d: int = 512, rank: int = 64, noise: float = 0.5, seed: int = 0,
                         n_queries: int = 0):
    """Embedding-shaped test data: a low-rank signal with a decaying spectrum plus isotropic noise, unit rows.

    Real CLIP embeddings concentrate in a few dozen directions; isotropic Gaussian vectors (noise only) are
    the worst case for approximate indexes. noise = noise-to-signal norm ratio. Returns xb (n, d) or, with
    n_queries, (xb, queries) drawn from the same distribution.
    """
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, rank)))[0].T.astype(np.float32)  # (rank, d) orthonormal
    spectrum = (1.0 / np.sqrt(np.arange(1, rank + 1))).astype(np.float32)  # (rank,)

    def draw(m: int) -> np.ndarray:
        z = rng.standard_normal((m, rank), dtype=np.float32) * spectrum  # (m, rank)
        signal = z @ basis  # (m, d)
        signal /= np.linalg.norm(signal, axis=1, keepdims=True)
        eps = rng.standard_normal((m, d), dtype=np.float32)
        eps *= noise / np.linalg.norm(eps, axis=1, keepdims=True)
        x = signal + eps
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    xb = draw(n)
    return (xb, draw(n_queries)) if n_queries else xb
