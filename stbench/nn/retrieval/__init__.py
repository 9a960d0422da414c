"""Top-K cosine retrieval (``topk``) and expression aggregation (``aggregate``), for models that predict by
retrieval: a query spot's expression is the aggregate of the expression of the ``k`` reference spots whose
embeddings are most similar to its own. See :mod:`stbench.nn.retrieval.topk` for memory and tie rules."""
from .aggregate import (AGGREGATIONS, aggregate, aggregate_mean, aggregate_top1, aggregate_weighted,
                        predict_by_retrieval)
from .topk import BLOCK_BYTES, DEFAULT_REF_CHUNK, _decode_key, _order_key, default_chunk_sizes, topk_cosine

__all__ = ["topk_cosine", "aggregate", "aggregate_mean", "aggregate_top1", "aggregate_weighted", "predict_by_retrieval",
           "default_chunk_sizes", "AGGREGATIONS", "BLOCK_BYTES", "DEFAULT_REF_CHUNK", "_decode_key", "_order_key"]
