"""Memory levers: gradient accumulation over microbatches and rematerialisation.

Accumulation must give the full batch's update (to float32 rounding) for an
objective whose loss is a mean of per-example terms; that needs the same noise
for an example whichever microbatch it falls in, so the equivalence test uses an
objective that draws nothing from its key. Rematerialisation must leave the
network's outputs and gradients unchanged and shrink what the forward pass keeps
for the backward pass (the residuals `jax.vjp` keeps: XLA's CPU backend merges the
recomputation back into the forward pass, so its buffer sizes cannot show it;
`benchmarks/memory.py` reports both).
"""
import copy
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import config as config_lib
from jaxdiff import diffusion, models, parallel
from jaxdiff.objectives import base
from jaxdiff.objectives.edm import EDMObjective
from jaxdiff.train import loop, microbatch
from jaxdiff.train import step as step_lib
from jaxdiff.train.experiment import Experiment


def mesh_of(n: int):
  import ml_collections
  return parallel.make_mesh(ml_collections.ConfigDict({"data": n, "fsdp": 1}),
                            devices=jax.devices()[:n])


class KeylessEDM(EDMObjective):
  """EDM's weighted loss with noise levels and noise derived from each image: the same
  numbers for an example in any microbatch."""

  def loss(self, params, aux, batch, key, step):
    y = batch["image"]
    sigma = jnp.exp(2.0 * jnp.mean(y, axis=(1, 2, 3)))
    noise = jnp.sin(13.0 * y + 1.0)
    denoised = self.denoise(params, y + base.expand_to(sigma, y) * noise, sigma)
    per_sample = diffusion.edm_loss_weight(sigma, self.sigma_data) * base.per_sample_sum(
        (denoised - y) ** 2)
    return jnp.mean(per_sample), {"per_sample_loss": per_sample, "sigma": sigma,
                                  "mean_sigma": jnp.mean(sigma)}


def one_step(config, microbatches: int, mesh):
  c = copy.deepcopy(config)
  c.train.microbatches = microbatches
  exp = Experiment(c, mesh=mesh)
  objective = KeylessEDM(exp.apply_fn, exp.noise_sampler)
  objective.mesh = exp.mesh
  edges = step_lib.loss_bucket_edges(4, exp.noise_sampler)
  step = jax.jit(step_lib.make_train_step(objective, exp.tx, c, edges))
  state, metrics = step(exp.init_state(), exp.global_batch(0))
  return jax.device_get(state.params), jax.device_get(metrics)


def test_microbatches_give_the_full_batch_update():
  c = config_lib.load_config("digits_edm:smoke")
  c.data.batch_size = 32
  mesh = mesh_of(4)
  full_params, full_metrics = one_step(c, 1, mesh)
  for k in (4,):  # microbatches of 8 examples, 2 per device
    params, metrics = one_step(c, k, mesh)
    for name in ("loss", "grad_norm", "mean_sigma"):
      np.testing.assert_allclose(metrics[name], full_metrics[name], rtol=2e-6, err_msg=name)
    buckets = sorted(n for n in metrics if n.startswith("loss_by_sigma/"))
    assert len(buckets) == 4
    for name in buckets:  # per-example values came back in batch order
      np.testing.assert_allclose(metrics[name], full_metrics[name], rtol=2e-6, err_msg=name)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(full_params)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_microbatch_split_is_strided_and_inverted():
  x = jnp.arange(12 * 2).reshape(12, 2)
  parts = microbatch._split(x, 3, None)
  np.testing.assert_array_equal(parts[1][:, 0], [2, 8, 14, 20])  # rows 1, 4, 7, 10
  np.testing.assert_array_equal(microbatch._merge(parts), x)


def test_one_microbatch_is_the_plain_gradient():
  def loss_fn(p, batch, key):
    return jnp.mean((batch["image"] * p) ** 2 + jax.random.normal(key, ())), {}
  batch, key = {"image": jnp.arange(8.0)}, jax.random.key(0)
  want = jax.value_and_grad(loss_fn, has_aux=True)(2.0, batch, key)
  got = microbatch.value_and_grad(loss_fn, 2.0, batch, key, 1)
  assert jax.tree.map(float, got) == jax.tree.map(float, want)


def test_training_with_microbatches_runs_and_logs(tmp_path):
  c = config_lib.load_config("toy2d_edm:smoke")
  c.train.microbatches = 4
  c.train.num_steps = 3
  c.train.log_every = 1
  summary = loop.train(c, str(tmp_path), mesh=mesh_of(2))
  assert summary["step"] == 3
  with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if '"loss"' in line]
  assert len(rows) == 3 and all(np.isfinite(r["loss"]) for r in rows)
  assert any(k.startswith("loss_by_sigma/") for k in rows[0])


@pytest.mark.parametrize("overrides, match", [
    ({"train.microbatches": 3}, r"train\.microbatches=3 does not divide config\.data\.batch_size"
                                r"=16; use a divisor, e\.g\. --config\.train\.microbatches=2"),
    ({"train.microbatches": 0}, r"train\.microbatches=0 must be a number > 0"),
    ({"train.microbatches": 16}, r"microbatches of 1 examples, not divisible by the 2 devices; "
                                 r"use --config\.train\.microbatches=8"),
    ({"train.microbatches": 2, "objective.name": "stf"},
     r"'stf' objective's targets depend on the whole batch.*--config\.train\.microbatches=1"),
    ({"train.microbatches": 2, "objective.name": "sct"},
     r"'sct' objective's targets depend on the whole batch"),
    ({"model.remat": "some"}, r"model\.remat='some'.*'none', 'blocks', 'full'"),
])
def test_bad_lever_values_are_named(overrides, match):
  c = config_lib.load_config("digits_edm:smoke")
  for dotted, value in overrides.items():
    section, key = dotted.split(".")
    c[section][key] = value
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(c, num_devices=2)


def test_blocks_remat_is_refused_for_the_mlp():
  c = config_lib.load_config("toy2d_edm:smoke")
  c.model.remat = "blocks"
  with pytest.raises(config_lib.ConfigError, match=r"remat='blocks'.*mlp.*full or none"):
    config_lib.validate(c)
  c.model.remat = "full"
  config_lib.validate(c)


def unet_loss(remat: str):
  cfg = dict(name="ddpmpp", model_channels=16, channel_mult=(1, 2), num_blocks=1,
             attn_resolutions=(4,), dropout=0.2, remat=remat)
  model = models.build_model(cfg, image_shape=(8, 8, 3))
  apply_fn = base.make_apply_fn(model, models.remat_whole_network(cfg))
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  params = nn.meta.unbox(model.init(jax.random.key(0), x, jnp.ones((4,)))["params"])

  def loss(params):
    out = apply_fn(params, x, jnp.linspace(-1, 1, 4), train=True,
                   dropout_key=jax.random.key(2))
    return jnp.sum(out ** 2)
  return loss, params


def saved_activation_bytes(fn, params) -> int:
  """Bytes the forward pass keeps for the backward pass, besides the parameters: the
  residuals held by the function `jax.vjp` returns."""
  _, backward = jax.vjp(fn, params)
  kept = {id(leaf): leaf for leaf in jax.tree.leaves(backward)}
  for p in jax.tree.leaves(params):
    kept.pop(id(p), None)
  return sum(leaf.size * leaf.dtype.itemsize for leaf in kept.values())


def test_remat_keeps_the_math_and_saves_less_for_the_backward_pass():
  results = {}
  for remat in ("none", "blocks", "full"):
    loss, params = unet_loss(remat)
    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    results[remat] = (value, grads, saved_activation_bytes(loss, params))
  value, grads, kept = results["none"]
  for remat in ("blocks", "full"):
    v, g, _ = results[remat]
    np.testing.assert_allclose(v, value, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(grads)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  activations = {r: results[r][2] for r in results}
  # Per block only its inputs survive; with 'full' only the network's inputs.
  assert activations["blocks"] < 0.5 * activations["none"], activations
  assert activations["full"] < 0.1 * activations["blocks"], activations


def test_remat_keeps_parameter_names():
  _, plain = unet_loss("none")
  _, blocks = unet_loss("blocks")
  assert jax.tree.structure(plain) == jax.tree.structure(blocks)
