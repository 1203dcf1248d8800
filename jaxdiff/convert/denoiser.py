"""`official_denoiser(path)`: D(x, sigma, class_labels) of an NVlabs/edm pickle, in JAX.

The converted network (`edm.load_network`) under the pickle's preconditioner
(`jaxdiff.diffusion.precond`: `edm_precond`, `vp_precond` or `ve_precond` with the
pickle's constants), computed in float32 as EDM does on a CPU; jitted once per denoiser.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.convert.edm import Network, load_network

class OfficialDenoiser:
  """`D(x, sigma, class_labels=None)`: the official preconditioned network, in JAX.

  x: [B, H, W, C] (NHWC); sigma: [B] or a scalar; class_labels: one-hot [B, label_dim]
  (or integer [B]; None gives EDM's zero labels). Returns D(x; sigma), NHWC float32.
  """

  def __init__(self, network: Network):
    self.network = network
    self.precond = network.precond
    self.params = jax.tree.map(jnp.asarray, network.converted.params)
    self._apply = jax.jit(self._denoise)

  def _denoise(self, params, x, sigma, class_labels):
    conv = self.network.converted
    x = jnp.asarray(x, jnp.float32)
    batch = x.shape[0]
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (batch,))
    c_skip, c_out, c_in, c_noise = self.precond.coefficients(sigma)
    expand = lambda c: c.reshape((batch,) + (1,) * (x.ndim - 1))

    def raw():
      return conv.module.apply({"params": params}, expand(c_in) * x, c_noise, class_labels,
                               None, train=False)

    f_x = raw()
    return expand(c_skip) * x + expand(c_out) * f_x.astype(jnp.float32)

  def __call__(self, x, sigma, class_labels=None) -> jax.Array:
    if not self.precond.label_dim:
      class_labels = None  # EDM's preconditioners ignore labels of an unconditional net
    return self._apply(self.params, x, sigma, class_labels)


def official_denoiser(path: str) -> OfficialDenoiser:
  """D(x, sigma, class_labels=None) equal to the official preconditioned EMA network of an
  NVlabs/edm pickle (read without running any of its code)."""
  return OfficialDenoiser(load_network(path))
