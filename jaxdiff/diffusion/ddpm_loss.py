"""DiT's variational-bound terms and hybrid training loss for discrete-time diffusion
(docs/ddpm.md; facebookresearch/DiT `gaussian_diffusion.py` `_vb_terms_bpd`, `training_losses`,
`diffusion_utils.py`). Pure: the loss takes the model output."""
from __future__ import annotations

from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion.ddpm import (DiscreteSchedule, _split_output, mean_flat,
                                    p_mean_variance, q_posterior_mean_variance)

Array = jax.Array


# ---------------------------------------------------------------------------------------
# Likelihood terms (nats unless stated).
# ---------------------------------------------------------------------------------------


def normal_kl(mean1, logvar1, mean2, logvar2) -> Array:
  """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, broadcasting."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) +
                (mean1 - mean2)**2 * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x) -> Array:
  """The tanh approximation 0.5 (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))."""
  return 0.5 * (1.0 + jnp.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, means, log_scales) -> Array:
  """log P(x) of a Gaussian discretised to 256 bins of width 2/255 on [-1, 1] (nats).

  Interior bins integrate the density over [x - 1/255, x + 1/255]; x < -0.999 takes the
  whole lower tail, x > 0.999 the whole upper tail; probabilities are floored at 1e-12
  before the log. Uses `approx_standard_normal_cdf`, as DiT does.
  """
  x, means, log_scales = jnp.asarray(x), jnp.asarray(means), jnp.asarray(log_scales)
  if not x.shape == means.shape == log_scales.shape:
    raise ValueError(f"shapes differ: x {x.shape}, means {means.shape}, "
                     f"log_scales {log_scales.shape}.")
  centered = x - means
  inv_stdv = jnp.exp(-log_scales)
  cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
  cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_cdf_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus,
                   jnp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def vb_terms_bpd(schedule: DiscreteSchedule,
                 model_output,
                 x0,
                 x_t,
                 t,
                 learn_sigma: bool = True,
                 clip_denoised: bool = False,
                 channel_axis: int = -1) -> Tuple[Array, Array]:
  """DiT's `_vb_terms_bpd`: one term of the variational bound, in bits, per example.

  t > 0: mean_flat KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) / ln 2;
  t = 0: mean_flat(-log p(x0 | x_1)) / ln 2, the discretised decoder NLL with the model's
  mean and scale exp(log_variance / 2).
  DiT's default is clip_denoised=True; its training loss passes False (jaxdiff's default).

  Returns:
    (output [B], pred_x0).
  """
  x0, x_t = jnp.asarray(x0), jnp.asarray(x_t)
  true_mean, _, true_log_var = q_posterior_mean_variance(schedule, x0, x_t, t)
  out = p_mean_variance(schedule, model_output, x_t, t, learn_sigma, clip_denoised,
                        channel_axis=channel_axis)
  kl = mean_flat(normal_kl(true_mean, true_log_var, out.mean, out.log_variance)) / np.log(2.0)
  decoder_nll = -discretized_gaussian_log_likelihood(
      x0.astype(out.mean.dtype), out.mean, 0.5 * out.log_variance)
  decoder_nll = mean_flat(decoder_nll) / np.log(2.0)
  return jnp.where(jnp.asarray(t) == 0, decoder_nll, kl), out.pred_x0


def training_losses(schedule: DiscreteSchedule,
                    model_output,
                    x0,
                    x_t,
                    t,
                    noise,
                    learn_sigma: bool = True,
                    rescale_learned_sigmas: bool = False,
                    channel_axis: int = -1) -> Dict[str, Array]:
  """DiT's `training_losses` (eps prediction, loss type MSE), from the model output.

  loss = mse + vb with mse = mean_flat((noise - eps)^2) and, with `learn_sigma`, vb =
  `vb_terms_bpd` evaluated on [stop_gradient(eps), v]: the bound trains only the variance,
  never the mean (Nichol & Dhariwal's L_hybrid with lambda = 1 per dimension, bits).
  `rescale_learned_sigmas` is DiT's RESCALED_MSE (vb * T / 1000). Without `learn_sigma`
  the loss is the mse alone.

  Args:
    model_output: the network's output at (x_t, t).
    x0, noise: the clean batch and the noise that made x_t = q_sample(schedule, x0, t, noise).
    t: int [B].

  Returns:
    {"loss", "mse"} and, with learn_sigma, "vb"; each [B].
  """
  x0 = jnp.asarray(x0)
  x_t = jnp.asarray(x_t)
  eps, v = _split_output(model_output, x0.shape, learn_sigma, channel_axis)
  terms = {}
  if learn_sigma:
    axis = channel_axis % x0.ndim
    frozen = jnp.concatenate([jax.lax.stop_gradient(eps), v], axis=axis)
    vb, _ = vb_terms_bpd(schedule, frozen, x0, x_t, t, learn_sigma=True,
                         clip_denoised=False, channel_axis=channel_axis)
    if rescale_learned_sigmas:
      vb = vb * (schedule.num_timesteps / 1000.0)
    terms["vb"] = vb
  mse = mean_flat((jnp.asarray(noise) - eps)**2)
  terms["mse"] = mse
  terms["loss"] = (mse + terms["vb"]) if learn_sigma else mse
  return terms
