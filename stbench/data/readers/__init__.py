"""Readers turn a catalogue entry's files into stbench datasets.

``base`` is the interface and the AnnData contract; the helpers a reader shares, one concern per module:
``params`` (reader params), ``files`` (finding a slide's files), ``geometry`` (pixel size, image size,
grid), ``checks`` (the contract check and the data checks), ``build`` (assembling the AnnData) and
``text`` (one-line messages). The built-in readers are ``visium``, ``st_legacy`` and ``anndata_reader``.
The names below are also importable from the 0.1 path ``stbench.readers.checks``.
"""
from ...errors import DataError, did_you_mean
from .base import Reader, SlideReader
from .build import build_slide, counts_matrix, n_zero_count_spots, spot_obs, unique_gene_symbols
from .checks import STBENCH_UNS_KEYS, check_in_image, check_slide_adata, match_rate_check
from .files import IMAGE_PATTERNS, exactly_one, find_by_suffix, find_image, glob_one, list_files, matches_any
from .geometry import PLAUSIBLE_UM_PER_PX, TIFF_SUFFIXES, estimate_pixel_size, grid_from_coordinates, image_size
from .params import (MIN_MATCH_RATE, ReadParams, bool_param, check_params, choice_param, fraction_param,
                     pattern_param, positive_float_param, read_params)
from .text import one_line, shown

__all__ = [
    "Reader", "SlideReader", "DataError", "did_you_mean",
    "build_slide", "counts_matrix", "n_zero_count_spots", "spot_obs", "unique_gene_symbols",
    "STBENCH_UNS_KEYS", "check_in_image", "check_slide_adata", "match_rate_check",
    "IMAGE_PATTERNS", "exactly_one", "find_by_suffix", "find_image", "glob_one", "list_files", "matches_any",
    "PLAUSIBLE_UM_PER_PX", "TIFF_SUFFIXES", "estimate_pixel_size", "grid_from_coordinates", "image_size",
    "MIN_MATCH_RATE", "ReadParams", "bool_param", "check_params", "choice_param", "fraction_param",
    "pattern_param", "positive_float_param", "read_params",
    "one_line", "shown",
]
