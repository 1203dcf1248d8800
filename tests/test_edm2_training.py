"""Training EDM2 in jaxdiff (docs/edm2.md#loss): the network with its log-variance head as one
parameter tree, the loss with the learned uncertainty (Karras et al. 2024, Eq. 21), ECT's
dropout placement, and the EDM2 ImageNet-64 recipe's smoke run."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdiff import config as config_lib
from jaxdiff import models, objectives
from jaxdiff.errors import ConfigError
from jaxdiff.objectives import base

IMAGE = (8, 8, 3)


def tiny_edm2(**overrides):
  cfg = ml_collections.ConfigDict(dict(
      name="edm2", model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(),
      dropout=0.0, label_dropout=0.0, augment_dim=0, dtype="float32", remat="none"))
  cfg.update(overrides)
  return models.build_model(cfg, image_shape=IMAGE, num_classes=4)


def init(model):
  x = jnp.zeros((2,) + IMAGE)
  return nn.unbox(model.init(jax.random.key(0), x, jnp.zeros((2,)), jnp.zeros((2, 4)))["params"])


def test_edm2_params_hold_the_unet_and_the_logvar_head_as_the_official_precond():
  params = init(tiny_edm2())
  assert set(params) == {"unet", "logvar"}
  # The head's single MPConv weight over the 128 Fourier features (official logvar_channels).
  assert jax.tree.leaves(params["logvar"])[0].shape == (128, 1)
  # At the official S size the tree counts as the official Precond (tests/test_edm2.py).
  cfg = config_lib.load_config("imagenet64_edm2").model
  model = models.build_model(cfg, image_shape=(64, 64, 3), num_classes=1000)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3),
                                                                               jnp.float32),
                          jax.ShapeDtypeStruct((1,), jnp.float32),
                          jax.ShapeDtypeStruct((1, 1000), jnp.float32))["params"]
  assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes)) == 280_209_381


def _objective(learned_uncertainty=True, **model_overrides):
  model = tiny_edm2(**model_overrides)
  c = config_lib.load_config("imagenet64_edm2:smoke")
  c.objective.learned_uncertainty = learned_uncertainty
  c.data.num_classes = 4
  apply_fn = base.make_apply_fn(model)
  obj = objectives.build(c, apply_fn, IMAGE)
  return obj, model, init(model)


def _batch():
  key = jax.random.key(3)
  return {"image": jax.random.uniform(key, (4,) + IMAGE, minval=-1, maxval=1),
          "label": jnp.array([0, 1, 2, 3])}


def test_learned_uncertainty_loss_is_eq21_written_per_pixel():
  """The official form: per pixel (w / e^u) (D - y)^2 + u, summed over pixels and divided by
  the batch; u from the network's head at c_noise = ln(sigma) / 4."""
  obj, model, params = _objective()
  # A head that is not ~0 everywhere, so that the division and the + u both matter.
  params["logvar"] = jax.tree.map(lambda w: w * 3.0, params["logvar"])
  batch, key = _batch(), jax.random.key(7)
  loss, metrics = obj.loss(params, None, batch, key, 0)

  k_sigma, k_noise, k_drop, _ = jax.random.split(key, 4)
  y = batch["image"]
  sigma = metrics["sigma"]
  noise = jax.random.normal(k_noise, y.shape)
  x = y + sigma[:, None, None, None] * noise
  labels = jax.nn.one_hot(batch["label"], 4)
  d = obj.denoise(params, x, sigma, labels, train=True, dropout_key=k_drop)
  u = model.apply({"params": params}, jnp.log(sigma) / 4, method="log_variance")
  w = (sigma**2 + 0.25) / (sigma * 0.5)**2
  per_pixel = (w / jnp.exp(u))[:, None, None, None] * (d - y)**2 + u[:, None, None, None]
  expected = per_pixel.sum() / y.shape[0]
  np.testing.assert_allclose(loss, expected, rtol=2e-6)
  # The loss buckets keep EDM's weighted error, without the uncertainty.
  np.testing.assert_allclose(metrics["per_sample_loss"],
                             (w[:, None, None, None] * (d - y)**2).sum((1, 2, 3)), rtol=2e-6)
  assert abs(float(metrics["logvar"]) - float(u.mean())) < 1e-6


def test_only_the_uncertainty_loss_trains_the_head():
  batch, key = _batch(), jax.random.key(7)
  for learned, trains in ((True, True), (False, False)):
    obj, _, params = _objective(learned_uncertainty=learned)
    grads = jax.grad(lambda p: obj.loss(p, None, batch, key, 0)[0])(params)
    head = np.abs(np.asarray(jax.tree.leaves(grads["logvar"])[0])).max()
    assert (head > 0) == trains


def test_the_head_learns_the_log_of_the_expected_loss():
  """Eq. 21's point: for a fixed error L per sample, minimising L / e^u + n u over u gives
  u = ln(L / n), the per-pixel expected loss. Gradient descent on the head alone at one
  noise level gets there."""
  obj, model, params = _objective()
  c_noise = jnp.log(jnp.full((1,), 0.7)) / 4
  error, pixels = 12.0, float(np.prod(IMAGE))
  u_of = lambda head: model.apply({"params": {**params, "logvar": head}}, c_noise,
                                  method="log_variance")[0]
  objective = lambda head: error / jnp.exp(u_of(head)) + pixels * u_of(head)
  head = params["logvar"]
  step = jax.jit(lambda h: jax.tree.map(lambda a, g: a - 2e-4 * g, h, jax.grad(objective)(h)))
  for _ in range(300):
    head = step(head)
  np.testing.assert_allclose(u_of(head), np.log(error / pixels), atol=1e-2)


def test_uncertainty_needs_a_head_and_edm_formulation():
  c = config_lib.load_config("digits_edm:smoke")
  c.objective.learned_uncertainty = True
  with pytest.raises(ConfigError, match=r"learned_uncertainty=True needs a network with a "
                                        r"log-variance head.*model.name='ddpmpp'"):
    config_lib.validate(c)
  c = config_lib.load_config("imagenet64_edm2:smoke")
  c.objective.formulation = "vp"
  with pytest.raises(ConfigError, match="formulation=edm"):
    config_lib.validate(c)


def test_dropout_resolution_limits_dropout_to_the_low_resolutions():
  """ECT's ImageNet networks drop out only at resolutions <= 16 (here: <= 4 of an 8x8 net,
  or none at all with a bound below every level)."""
  x = jax.random.normal(jax.random.key(1), (2,) + IMAGE)
  noise, labels = jnp.zeros((2,)), jnp.zeros((2, 4))

  def outputs(dropout_resolution):
    model = tiny_edm2(dropout=0.5, dropout_resolution=dropout_resolution)
    params = init(model)
    # Unit output gain: the official out_gain starts at 0, which would hide the dropout.
    params["unet"]["out_gain"] = jnp.ones(())
    run = lambda k: model.apply({"params": params}, x, noise, labels, train=True,
                                rngs={"dropout": jax.random.key(k)})
    return run(0), run(1), model.apply({"params": params}, x, noise, labels)

  a, b, plain = outputs(2)           # below every level: no dropout anywhere
  np.testing.assert_array_equal(a, plain)
  a, b, plain = outputs(4)           # the 4x4 level only
  assert not np.allclose(a, b)
  a_all, _, _ = outputs(0)           # every block (EDM2's)
  assert not np.allclose(a, a_all)


def test_imagenet64_edm2_smoke_trains_with_the_uncertainty(tmp_path):
  from jaxdiff.train import loop
  from tests.test_train import losses, mesh_of
  summary = loop.train(config_lib.load_config("imagenet64_edm2:smoke"), str(tmp_path),
                       mesh=mesh_of(2))
  assert summary["step"] == 4
  assert all(np.isfinite(losses(str(tmp_path))))
