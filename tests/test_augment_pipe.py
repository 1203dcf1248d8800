"""EDM's augmentation pipeline (jaxdiff/augment/, docs/augment.md).

Goldens: tests/goldens/augment_pipe_*.npz hold the official NVlabs/edm AugmentPipe's
output and labels (torch, CPU) for recorded random draws, with those draws in
AugmentParams' layout (regenerate with tests/goldens/make_augment_pipe_goldens.py).
apply_augment must reproduce them: pixel blitting bit-exactly, everything else to
float32 rounding (measured max 3.2e-6 overall, 2.5e-6 in the interior; asserted 1e-5).
Then the properties: p = 0 is the identity with zero labels, shapes and dtypes, keys,
jit, batch independence with margin="max", the sampler's gating rates, and errors.
"""
import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import augment as ap

GOLDENS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "goldens")
GOLDEN_FILES = ("single", "combo", "edm_cifar10")
EXACT = {"xflip", "yflip", "rotate_int", "translate_int"}  # pure pixel moves: bitwise
ATOL = 1e-5        # images, anything with resampling or a colour matrix
LABEL_ATOL = 1e-6  # labels (cos/sin of float32 angles)
BORDER = 3         # "interior" excludes this many pixels on each side


@functools.lru_cache(maxsize=None)
def _load(fname):
  return dict(np.load(os.path.join(GOLDENS, f"augment_pipe_{fname}.npz")))


def _cases():
  out = []
  for fname in GOLDEN_FILES:
    for name in json.loads(str(_load(fname)["meta"])):
      out.append((fname, name))
  return out


def _golden(fname, name, margin="batch"):
  d = _load(fname)
  meta = json.loads(str(d["meta"]))[name]
  config = ap.AugmentConfig(**meta["kwargs"], margin=margin)
  prefix = f"{name}/params/"
  fields = {k[len(prefix):]: jnp.asarray(v) for k, v in d.items() if k.startswith(prefix)}
  x = d[str(d[f"{name}/x_ref"])]
  return config, ap.AugmentParams(config=config, **fields), x, d[f"{name}/y"], d[f"{name}/labels"]


# Tests call everything under jit: eager dispatch compiles each small op on its own,
# which costs more test time than the programs themselves.
_apply = jax.jit(ap.apply_augment)
_sample = jax.jit(ap.sample_augment_params, static_argnums=(1, 2))


@pytest.mark.parametrize("fname,name", _cases())
def test_matches_official(fname, name):
  config, params, x, y_ref, labels_ref = _golden(fname, name)
  y, labels = _apply(jnp.asarray(x), params)
  y, labels = np.asarray(y), np.asarray(labels)
  assert labels.shape == labels_ref.shape == (x.shape[0], config.label_dim)
  np.testing.assert_allclose(labels, labels_ref, rtol=0, atol=LABEL_ATOL)
  assert y.shape == y_ref.shape and y.dtype == np.float32
  if name in EXACT:
    np.testing.assert_array_equal(y, y_ref)
  else:
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=ATOL)
    interior = (slice(None), slice(BORDER, -BORDER), slice(BORDER, -BORDER))
    np.testing.assert_allclose(y[interior], y_ref[interior], rtol=0, atol=ATOL)
  # Every transform of the case did something to the images.
  assert not np.allclose(y, x)


@pytest.mark.parametrize("name", ["geometric", "edm_cifar10"])
def test_margin_max_matches_official_when_margin_suffices(name):
  fname = "edm_cifar10" if name == "edm_cifar10" else "combo"
  _, params, x, y_ref, _ = _golden(fname, name, margin="max")
  y, _ = _apply(jnp.asarray(x), params)
  np.testing.assert_allclose(np.asarray(y), y_ref, rtol=0, atol=ATOL)


def test_margin_batch_is_needed_when_zooming_out():
  """Official zeros beyond the batch margin reach the output border of a zoomed-out
  sample: margin="batch" reproduces them, margin="max" differs there only."""
  _, params_max, x, y_ref, _ = _golden("combo", "scale_zoom_out", margin="max")
  y, _ = _apply(jnp.asarray(x), params_max)
  err = np.abs(np.asarray(y) - y_ref)
  assert err.max() > 1e-5
  assert err[:, BORDER:-BORDER, BORDER:-BORDER].max() < ATOL


def test_edm_cifar10_config():
  """NVlabs/edm train.py: AugmentPipe(p=0.12, xflip=1e8, yflip=1, scale=1,
  rotate_frac=1, aniso=1, translate_frac=1), network augment_dim=9."""
  c = ap.EDM_CIFAR10
  assert (c.p, c.xflip, c.yflip, c.scale, c.rotate_frac, c.aniso, c.translate_frac) == (
      0.12, 1e8, 1.0, 1.0, 1.0, 1.0, 1.0)
  assert (c.rotate_int, c.translate_int, c.brightness, c.contrast, c.lumaflip, c.hue,
          c.saturation) == (0.0,) * 7
  assert c.label_dim == ap.label_dim(c) == 9
  assert ap.edm_config() == c and ap.edm_config(0.3).p == 0.3
  everything = ap.AugmentConfig(**{name: 1 for name in ap.TRANSFORMS})
  assert everything.label_dim == 19


def test_sym6_is_an_orthonormal_lowpass():
  h = ap.SYM6
  assert len(h) == 12
  np.testing.assert_allclose(h.sum(), np.sqrt(2), atol=1e-12)
  auto = np.correlate(h, h, mode="full")[len(h) - 1::2]  # lags 0, 2, 4, ...
  np.testing.assert_allclose(auto, np.eye(1, len(auto))[0], atol=1e-12)


def _images(n=6, h=16, w=16, c=3, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.uniform(-1, 1, (n, h, w, c)).astype(np.float32))


ALL_ON = {name: 1.0 for name in ap.TRANSFORMS}


@pytest.mark.parametrize("settings", [dict(ap.EDM_CIFAR10.__dict__), ALL_ON],
                         ids=["edm_cifar10", "everything"])
def test_p_zero_is_identity(settings):
  settings = dict(settings, p=0.0)
  x = _images()
  y, labels = jax.jit(functools.partial(ap.augment, **settings))(jax.random.PRNGKey(3), x)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
  assert labels.shape == (6, ap.AugmentConfig(**settings).label_dim)
  assert not np.asarray(labels).any()


def test_gated_off_samples_are_untouched():
  """Samples with no geometric / colour draw come back bit-exactly (the official
  pipeline resamples them too, which is the identity only to ~2.5e-6)."""
  config = ap.AugmentConfig(p=1, scale=1, brightness=1)
  x = _images(n=3)
  params = ap.AugmentParams(config=config, scale=jnp.array([0.0, 0.7, 0.0]),
                            brightness=jnp.array([0.0, 0.0, 1.0]))
  y, labels = _apply(x, params)
  np.testing.assert_array_equal(np.asarray(y[0]), np.asarray(x[0]))
  np.testing.assert_array_equal(np.asarray(y[2]), np.asarray(x[2]) + np.float32(0.2))
  assert not np.allclose(y[1], x[1])
  np.testing.assert_allclose(np.asarray(labels), [[0, 0], [0.7, 0], [0, 1]], rtol=0, atol=1e-7)


def test_shapes_dtypes_keys_and_jit():
  """Everything runs under jit (eager also works but dispatches op by op, which is
  slow to test; eager and jit agree to float32 rounding, ~1e-5)."""
  x = _images(n=5, h=32, w=32)
  key = jax.random.PRNGKey(0)
  settings = dict(ap.EDM_CIFAR10.__dict__, p=0.5)
  y, labels = jax.jit(functools.partial(ap.augment, **settings))(key, x)
  assert y.shape == x.shape and y.dtype == jnp.float32
  assert labels.shape == (5, 9) and labels.dtype == jnp.float32
  assert np.asarray(labels).any()
  # The same through config=, and through the two halves; same key, same result.
  with_config = jax.jit(functools.partial(ap.augment, config=ap.edm_config(0.5)))
  y2, labels2 = with_config(key, x)
  np.testing.assert_array_equal(np.asarray(y2), np.asarray(y))
  np.testing.assert_array_equal(np.asarray(labels2), np.asarray(labels))
  params = _sample(key, 5, ap.edm_config(0.5))
  y3, labels3 = _apply(x, params)
  np.testing.assert_allclose(np.asarray(y3), np.asarray(y), rtol=0, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(labels3), np.asarray(labels))
  # Another key, other draws.
  _, labels4 = with_config(jax.random.PRNGKey(1), x)
  assert not np.array_equal(np.asarray(labels4), np.asarray(labels))
  # Other input dtypes come back in their own dtype.
  y5, _ = _apply(x.astype(jnp.bfloat16), params)
  assert y5.dtype == jnp.bfloat16


def test_batch_is_per_sample_without_vmap():
  """With margin="max" each image depends only on its own draws: the batched call
  equals one call per image (no vmap needed for a batch)."""
  config = dataclasses.replace(ap.AugmentConfig(**ALL_ON), margin="max")
  x = _images(n=4)
  params = jax.tree_util.tree_map(np.asarray, _sample(jax.random.PRNGKey(7), 4, config))
  y, labels = _apply(x, params)
  for i in range(4):
    one = jax.tree_util.tree_map(lambda a: a[i:i + 1], params)
    yi, li = _apply(x[i:i + 1], one)
    np.testing.assert_allclose(np.asarray(yi[0]), np.asarray(y[i]), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(li[0]), np.asarray(labels[i]))


def test_sampler_gating_rates():
  n = 4000
  config = ap.AugmentConfig(p=0.25, xflip=1e8, scale=1, aniso=2, translate_frac=1, hue=1,
                            hue_max=0.5)
  params = _sample(jax.random.PRNGKey(0), n, config)

  def rate(a):
    return float(np.mean(np.asarray(a) != 0))

  assert abs(rate(params.xflip) - 0.5) < 0.04          # always eligible, flip w.p. 1/2
  assert abs(rate(params.scale) - 0.25) < 0.03          # multiplier 1 * p
  assert abs(rate(params.aniso) - 0.5) < 0.04           # multiplier 2 * p
  assert abs(rate(params.aniso_angle) - 0.5) < 0.04     # aniso_rotate_prob, ungated by p
  assert abs(rate(params.translate_frac[:, 0]) - 0.25) < 0.03
  np.testing.assert_array_equal(np.asarray(params.translate_frac[:, 0]) != 0,
                                np.asarray(params.translate_frac[:, 1]) != 0)
  assert np.abs(np.asarray(params.hue)).max() <= np.pi * 0.5
  assert params.yflip is None and params.rotate_int is None
  # Enabling another transform leaves these draws alone.
  more = _sample(jax.random.PRNGKey(0), n, dataclasses.replace(config, brightness=1))
  np.testing.assert_array_equal(np.asarray(more.scale), np.asarray(params.scale))


def test_errors():
  with pytest.raises(ValueError):
    ap.AugmentConfig(scale=-1)
  with pytest.raises(ValueError):
    ap.AugmentConfig(margin="huge")
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="not both"):
    ap.augment(key, _images(n=1), config=ap.EDM_CIFAR10, p=0.5)
  with pytest.raises(ValueError, match="square"):  # raised while tracing
    jax.jit(functools.partial(ap.augment, rotate_int=1)).lower(key, _images(n=1, h=8, w=12))
  with pytest.raises(ValueError, match="channels"):
    jax.jit(functools.partial(ap.augment, brightness=1)).lower(key, _images(n=1, c=2))
  with pytest.raises(ValueError, match="missing"):
    _apply.lower(_images(n=1), ap.AugmentParams(config=ap.AugmentConfig(scale=1)))


# ------------------------------------------------------------------ wired into EDM's loss

def test_edm_loss_augments_the_clean_batch_and_conditions_the_network():
  """augment.p > 0: noise goes on the augmented image, the loss regresses onto it, and the
  network receives the augmentation labels (EDM's loss.py); p = 0 is the plain loss."""
  from jaxdiff import config as config_lib
  from jaxdiff.objectives import base
  from jaxdiff.objectives.edm import EDMObjective, augment_config
  seen = {}

  def apply_fn(p, x, c_noise, labels=None, augment_labels=None, *rest):
    seen["augment_labels"] = augment_labels
    return p * x

  c = config_lib.load_config("cifar10_edm")
  pipe = augment_config(c)
  assert pipe is not None and pipe.label_dim == 9 and pipe.p == 0.12
  y = jax.random.uniform(jax.random.PRNGKey(0), (6, 8, 8, 3), minval=-1, maxval=1)
  key = jax.random.PRNGKey(1)
  obj = EDMObjective(apply_fn, base.LognormalSampler(), augment=dataclasses.replace(pipe, p=1.0))
  loss, _ = obj.loss(jnp.float32(0.3), None, {"image": y}, key, 0)
  assert seen["augment_labels"].shape == (6, 9)
  aug, labels = obj.augment_batch(jax.random.fold_in(key, 0xA06), {"image": y})
  np.testing.assert_array_equal(np.asarray(seen["augment_labels"]), np.asarray(labels))
  plain = EDMObjective(apply_fn, base.LognormalSampler())
  want, _ = plain.loss(jnp.float32(0.3), None, aug, key, 0)   # same noise on the augmented y
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
  assert seen["augment_labels"] is None


def test_augment_settings_are_checked():
  from jaxdiff import config as config_lib
  c = config_lib.load_config("cifar10_edm")
  c.model.augment_dim = 0
  with pytest.raises(config_lib.ConfigError, match="model.augment_dim=9"):
    config_lib.validate(c)
  c = config_lib.load_config("cifar10_ect")
  c.augment.p = 0.12
  with pytest.raises(config_lib.ConfigError, match="does not use EDM's augmentation"):
    config_lib.validate(c)
  c = config_lib.load_config("cifar10_edm")
  c.augment.margin = "page"
  with pytest.raises(config_lib.ConfigError, match="config.augment"):
    config_lib.validate(c)


def test_stf_references_are_augmented_independently():
  from jaxdiff.objectives import base
  from jaxdiff.objectives.edm import EDMObjective
  obj = EDMObjective(lambda *a: a[1], base.LognormalSampler(),
                     augment=ap.AugmentConfig(p=1.0, xflip=1e8, scale=1.0))
  y = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 3))
  out, labels = obj.augment_batch(jax.random.PRNGKey(1), {"image": y, "reference": y})
  assert out["reference"].shape == y.shape and labels.shape == (4, 2)
  assert not np.allclose(np.asarray(out["reference"]), np.asarray(y))
  assert not np.allclose(np.asarray(out["reference"]), np.asarray(out["image"]))
