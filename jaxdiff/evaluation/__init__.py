"""Evaluation: Fréchet distance, toy-data distances, the digits feature network."""
from jaxdiff.evaluation.digits_classifier import compute_stats
from jaxdiff.evaluation.digits_classifier import digits_fid
from jaxdiff.evaluation.digits_classifier import DigitsFeatureExtractor
from jaxdiff.evaluation.frechet import frechet_distance
from jaxdiff.evaluation.toy import mmd_rbf
from jaxdiff.evaluation.toy import sliced_wasserstein

__all__ = [
    "DigitsFeatureExtractor",
    "compute_stats",
    "digits_fid",
    "frechet_distance",
    "mmd_rbf",
    "sliced_wasserstein",
]
