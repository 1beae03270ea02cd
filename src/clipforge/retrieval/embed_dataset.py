"""`embed_dataset`: a collection's image (and caption) embeddings in clip-retrieval's layout, no index.

    ROOT/img_emb/img_emb_{i}.npy   ROOT/text_emb/text_emb_{i}.npy   ROOT/metadata/metadata_{i}.parquet

plus the store's manifest.json and the job's index.json (source, model, precision, skipped files), which make
the job resumable: re-running it on the same ROOT embeds only what a killed run did not commit, and
`build_index` on the same ROOT later adds the faiss index without embedding anything again. It is the
embedding half of `build_index`, on any executor (`executor="ray"` for a Ray cluster).
"""
from __future__ import annotations

from typing import Callable, Optional

from clipforge.retrieval.build import DEFAULT_SHARD_SIZE, build_index

__all__ = ["embed_dataset"]


def embed_dataset(source: str, model: str, out_dir, *, batch_size: int = 64, workers: int = 0,
                  precision: str = "auto", shard_size: int = DEFAULT_SHARD_SIZE, device=None,
                  text: str | bool = "auto", progress: Optional[bool] = None, source_options: Optional[dict] = None,
                  on_batch: Optional[Callable[[dict], None]] = None, executor: str = "local",
                  executor_options: Optional[dict] = None) -> dict:
    """Embed every image of `source` (and its first caption, `text="auto"` when it has captions) into
    `out_dir`, one committed shard per `shard_size` samples; returns the job's summary."""
    return build_index(source, model, out_dir, batch_size=batch_size, workers=workers, precision=precision,
                       shard_size=shard_size, device=device, text=text, index_kind=None, progress=progress,
                       source_options=source_options, on_batch=on_batch, executor=executor,
                       executor_options=executor_options)
