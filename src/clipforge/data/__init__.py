"""clipforge.data: read image-text and labelled-image collections safely, batch them, write and inspect them.

    src = open_source("csv:pairs.csv")          # or folder:, imagefolder:, files:, jsonl:, parquet:, wds:
    for sample, image in src.iter_decoded():     # bad files are skipped and counted in src.skipped
        ...
    loader = make_pair_loader(src, model.preprocess_train, model.tokenizer, batch_size=64, seed=0, epoch=0)
"""
from clipforge.data.decode import DEFAULT_MAX_PIXELS, REASONS, BadSample, DecodeOptions, SkipCounter, decode_image
from clipforge.data.loader import make_labelled_loader, make_pair_loader
from clipforge.data.sample import Sample
from clipforge.data.sources import (
    KINDS, FilesSource, ImageFolderSource, ManifestSource, Source, WdsSource, open_source,
)

__all__ = [
    "Sample", "BadSample", "SkipCounter", "DecodeOptions", "decode_image", "DEFAULT_MAX_PIXELS", "REASONS",
    "Source", "FilesSource", "ImageFolderSource", "ManifestSource", "WdsSource", "open_source", "KINDS",
    "make_pair_loader", "make_labelled_loader",
]
