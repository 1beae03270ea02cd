"""faiss's process-wide knobs, set per call: OpenMP threads and the BLAS threshold of exact distances."""

from __future__ import annotations

from contextlib import contextmanager

import faiss

__all__ = ["omp_threads", "set_blas_for", "BLAS_FROM_NQ"]

# faiss chooses between a SIMD scan and BLAS for exact (flat) distances via the global
# distance_compute_blas_threshold; this build ships 128000, so BLAS never runs for realistic batches.
# Measured here (one thread, 50k-200k x 512): a single query is 3x faster without BLAS (4.7 vs 15 ms at
# 50k), from 4 queries on BLAS wins (1.2 vs 4.8 ms/query at 16, 0.7 vs 5 at 64). search() sets it per call.
BLAS_FROM_NQ = 4


@contextmanager
def omp_threads(n: int):
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old)


def set_blas_for(nq: int) -> None:
    # a global: concurrent searches may race on it, which changes speed only, never results
    faiss.cvar.distance_compute_blas_threshold = 1 if nq >= BLAS_FROM_NQ else 1 << 30
