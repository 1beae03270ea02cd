"""faiss's process-wide knobs, set per call: OpenMP threads and the BLAS threshold of exact distances."""

from __future__ import annotations

from contextlib import contextmanager

import faiss

__all__ = ["omp_threads", "set_blas_for", "BLAS_FROM_NQ"]

# exact distances by BLAS from this many queries, a SIMD scan below (measured: docs/design_notes.md)
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
