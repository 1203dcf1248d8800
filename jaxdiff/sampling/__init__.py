"""Samplers: EDM Heun/Euler (stochastic churn optional), consistency models, flow ODEs."""
from jaxdiff.sampling.consistency import consistency_sampler
from jaxdiff.sampling.edm import edm_sampler
from jaxdiff.sampling.flow import flow_sampler

__all__ = ["consistency_sampler", "edm_sampler", "flow_sampler"]
