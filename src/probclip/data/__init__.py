"""Training data: generic image-text sources (webdataset shards, CSV/TSV tables, in-memory datasets, any source
registered with ``register_source``), deterministic batch streams, masked views and mixed samples.

The synthetic world is its own package, ``probclip.synthetic``; it registers the ``synthetic`` source.
"""

from .captions import CaptionError, captions_from_payload, draw_caption, split_captions
from .csv import CsvPairs, read_pair_table
from .masking import mask_text_tokens, num_kept_patches, num_masked, sample_keep_patches
from .mixing import mix_images
from .samples import (
    DatasetError,
    PairBatch,
    PairCollator,
    SampleError,
    decode_image_bytes,
    derive_seed,
)
from .sources import (
    DatasetPairs,
    StreamSource,
    TrainBatches,
    build_source,
    build_train_batches,
    list_sources,
    register_source,
)
from .webdataset import ShardError, expand_shard_urls, iter_tar_records

__all__ = [
    "CaptionError",
    "CsvPairs",
    "DatasetError",
    "DatasetPairs",
    "PairBatch",
    "PairCollator",
    "SampleError",
    "ShardError",
    "StreamSource",
    "TrainBatches",
    "build_source",
    "build_train_batches",
    "captions_from_payload",
    "decode_image_bytes",
    "derive_seed",
    "draw_caption",
    "expand_shard_urls",
    "iter_tar_records",
    "list_sources",
    "mask_text_tokens",
    "mix_images",
    "num_kept_patches",
    "num_masked",
    "read_pair_table",
    "register_source",
    "sample_keep_patches",
    "split_captions",
]
