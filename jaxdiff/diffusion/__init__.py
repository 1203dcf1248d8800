"""Diffusion math shared by every objective and sampler (docs/edm.md#preconditioning).

Public API: `edm_precond`, `cm_precond`, `edm_loss_weight`, `karras_sigmas`. EDM's VP and
VE baselines: `vp_precond`, `ve_precond`, `vp_sigma`, `vp_sigma_inv`, `vp_ve_loss_weight`.
Discrete time as DiT trains it (`ddpm`, `ddpm_loss`; docs/ddpm.md): `ddpm_betas`,
`DiscreteSchedule`, `q_sample`, `ddpm_training_losses`. Also `denoise` (the preconditioned
denoiser around a raw network) and the lognormal noise distribution helpers.
"""
from jaxdiff.diffusion.ddpm import DiscreteSchedule
from jaxdiff.diffusion.ddpm import ddpm_betas
from jaxdiff.diffusion.ddpm import q_sample
from jaxdiff.diffusion.ddpm_loss import training_losses as ddpm_training_losses
from jaxdiff.diffusion.noise import lognormal_cdf
from jaxdiff.diffusion.noise import lognormal_quantile
from jaxdiff.diffusion.noise import lognormal_sigma
from jaxdiff.diffusion.precond import cm_precond
from jaxdiff.diffusion.precond import denoise
from jaxdiff.diffusion.precond import edm_loss_weight
from jaxdiff.diffusion.precond import edm_precond
from jaxdiff.diffusion.precond import karras_sigmas
from jaxdiff.diffusion.precond import ve_precond
from jaxdiff.diffusion.precond import vp_precond
from jaxdiff.diffusion.precond import vp_sigma
from jaxdiff.diffusion.precond import vp_sigma_inv
from jaxdiff.diffusion.precond import vp_ve_loss_weight

__all__ = [
    "DiscreteSchedule",
    "cm_precond",
    "ddpm_betas",
    "ddpm_training_losses",
    "q_sample",
    "denoise",
    "edm_loss_weight",
    "edm_precond",
    "karras_sigmas",
    "lognormal_cdf",
    "lognormal_quantile",
    "lognormal_sigma",
    "ve_precond",
    "vp_precond",
    "vp_sigma",
    "vp_sigma_inv",
    "vp_ve_loss_weight",
]
