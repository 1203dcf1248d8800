"""Samplers: EDM Heun/Euler (stochastic churn optional) and consistency models."""
from jaxdiff.sampling.consistency import consistency_sampler
from jaxdiff.sampling.edm import edm_sampler

__all__ = ["consistency_sampler", "edm_sampler"]
