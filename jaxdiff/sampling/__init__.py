"""Samplers: EDM Heun/Euler (stochastic churn optional), consistency models, flow ODEs,
DDPM ancestral and DDIM (discrete time)."""
from jaxdiff.sampling.consistency import consistency_sampler
from jaxdiff.sampling.ddpm import ancestral_sample, ddim_sample
from jaxdiff.sampling.edm import edm_sampler
from jaxdiff.sampling.flow import flow_sampler

__all__ = ["ancestral_sample", "consistency_sampler", "ddim_sample", "edm_sampler",
           "flow_sampler"]
