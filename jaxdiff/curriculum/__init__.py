"""Denoising-task-difficulty curriculum (Kim, Go, Kwon, Kim; arXiv 2403.10348).

docs/curriculum.md. Public API: `cluster_edges`, `stage_mask`. Also the
cluster orders and exact truncated samplers (`clusters`), host-side pacers
(`pacing`), the `config.curriculum` block (`settings`), the stage bookkeeping of
a running job (`runtime`) and the observational-study tools (`analysis`, `study`).
"""
from jaxdiff.curriculum.analysis import ddpm_alphas_cumprod
from jaxdiff.curriculum.analysis import ddpm_consecutive_kl
from jaxdiff.curriculum.analysis import iterations_to_converge
from jaxdiff.curriculum.analysis import make_probe_set
from jaxdiff.curriculum.analysis import marginal_kl_mc
from jaxdiff.curriculum.analysis import per_cluster_mean
from jaxdiff.curriculum.analysis import per_cluster_probe_losses
from jaxdiff.curriculum.analysis import plot_kl
from jaxdiff.curriculum.clusters import cluster_edges
from jaxdiff.curriculum.clusters import cluster_index
from jaxdiff.curriculum.clusters import quantile_intervals
from jaxdiff.curriculum.clusters import sample_sigma_in_mask
from jaxdiff.curriculum.clusters import sample_timestep_in_mask
from jaxdiff.curriculum.clusters import stage_mask
from jaxdiff.curriculum.clusters import stage_order
from jaxdiff.curriculum.pacing import ConstantPacer
from jaxdiff.curriculum.pacing import FixedPacer
from jaxdiff.curriculum.pacing import make_pacer
from jaxdiff.curriculum.pacing import Pacer
from jaxdiff.curriculum.pacing import PatiencePacer
from jaxdiff.curriculum.settings import default_curriculum_config
from jaxdiff.curriculum.settings import default_study_config
from jaxdiff.curriculum.settings import mask_for_stage
from jaxdiff.curriculum.settings import validate_curriculum_config

__all__ = [
    "ConstantPacer",
    "FixedPacer",
    "Pacer",
    "PatiencePacer",
    "cluster_edges",
    "cluster_index",
    "ddpm_alphas_cumprod",
    "ddpm_consecutive_kl",
    "default_curriculum_config",
    "default_study_config",
    "iterations_to_converge",
    "make_pacer",
    "make_probe_set",
    "marginal_kl_mc",
    "mask_for_stage",
    "per_cluster_mean",
    "per_cluster_probe_losses",
    "plot_kl",
    "quantile_intervals",
    "sample_sigma_in_mask",
    "sample_timestep_in_mask",
    "stage_mask",
    "stage_order",
    "validate_curriculum_config",
]
