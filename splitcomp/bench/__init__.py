"""Measurement: rate/accuracy evaluation of codecs on real models and data."""

from .evaluate import EvalResult, FeatureSet, collect_features, evaluate_codec, search_quality

__all__ = ["EvalResult", "FeatureSet", "collect_features", "evaluate_codec", "search_quality"]
