"""Measurement: rate/accuracy evaluation of codecs on real models and data."""

from .codec_eval import EvalResult, FeatureSet, collect_features, evaluate_codec, search_quality

__all__ = ["EvalResult", "FeatureSet", "collect_features", "evaluate_codec", "search_quality"]
