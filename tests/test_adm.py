"""EDM's DhariwalUNet (ADM) in jaxdiff: parameter count, official forward, official pickle.

Goldens from the official NVlabs/edm code: tests/goldens/make_adm_goldens.py (a tiny
EDMPrecond(DhariwalUNet) with every weight redrawn; docs/edm.md#adm).
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import models, weights
from jaxdiff.convert import dhariwal_unet, load_network, official_denoiser
from jaxdiff.models import adm
from jaxdiff.train import step as step_lib

GOLDENS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "goldens")
PICKLE = os.path.join(GOLDENS, "adm_cond.pkl")
# EDM's DhariwalUNet(img_resolution=64, in/out_channels=3, label_dim=1000) with its defaults
# (train.py --arch=adm, --augment=0): the official PyTorch network's parameter count.
OFFICIAL_IMAGENET64_PARAMS = 295_899_267
TINY = dict(img_resolution=8, in_channels=3, out_channels=3, label_dim=10, augment_dim=9,
            model_channels=8, channel_mult=(1, 2), channel_mult_emb=4, num_blocks=1,
            attn_resolutions=(4,), dropout=0.1, channels_per_head=4)
RTOL, ATOL = 1e-5, 1e-5


@pytest.fixture(scope="module")
def golden():
  return dict(np.load(os.path.join(GOLDENS, "adm_forward.npz")))


def _params(golden, module):
  state = {k[len("state/"):]: v for k, v in golden.items() if k.startswith("state/")}
  shapes = jax.eval_shape(lambda: step_lib.init_params(
      module, jax.random.PRNGKey(0), (8, 8, 3), 10, 9))
  shapes = {k: tuple(v.shape) for k, v in weights.flatten(shapes).items()}
  params, problems = weights.check_state_dict(state, shapes, dhariwal_unet.torch_name,
                                              dhariwal_unet.to_flax)
  assert not problems
  return params


def test_imagenet64_parameter_count_equals_official():
  module = adm.DhariwalUNet(img_resolution=64, in_channels=3, out_channels=3, label_dim=1000)
  tree = jax.eval_shape(lambda: step_lib.init_params(module, jax.random.PRNGKey(0),
                                                     (64, 64, 3), 1000))
  assert models.count_params(tree) == OFFICIAL_IMAGENET64_PARAMS
  built = models.build_model(dict(name="adm", model_channels=192, channel_mult=(1, 2, 3, 4),
                                  num_blocks=3, attn_resolutions=(32, 16, 8), dropout=0.1),
                             image_shape=(64, 64, 3), num_classes=1000)
  assert isinstance(built, adm.DhariwalUNet) and built.channels_per_head == 64


def test_forward_equals_official(golden):
  module = adm.DhariwalUNet(**TINY)
  params = _params(golden, module)
  assert len(weights.flatten(params)) == sum(
      k.startswith("state/") and not k.endswith("resample_filter") for k in golden)
  apply = jax.jit(lambda p, *a: module.apply({"params": p}, *a))
  f = apply(params, golden["x"], golden["noise_labels"], golden["class_labels"],
            golden["augment_labels"])
  np.testing.assert_allclose(np.asarray(f), golden["F"], rtol=RTOL, atol=ATOL)
  f = apply(params, golden["x"], golden["noise_labels"], golden["class_labels"], None)
  np.testing.assert_allclose(np.asarray(f), golden["F_no_augment"], rtol=RTOL, atol=ATOL)
  # Integer labels are one-hot encoded.
  f_int = apply(params, golden["x"], golden["noise_labels"],
                jnp.argmax(golden["class_labels"], -1), None)
  np.testing.assert_allclose(np.asarray(f_int), golden["F_no_augment"], rtol=RTOL, atol=ATOL)


def test_train_mode_dropout_and_remat(golden):
  module = adm.DhariwalUNet(**{**TINY, "label_dropout": 0.5})
  params = _params(golden, module)
  args = (golden["x"], golden["noise_labels"], golden["class_labels"], None)
  key = {"dropout": jax.random.PRNGKey(3)}
  run = lambda m: jax.jit(lambda p, *a: m.apply({"params": p}, *a, train=True, rngs=key))
  a = run(module)(params, *args)
  b = run(module.clone(remat_blocks=True))(params, *args)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(a) - golden["F_no_augment"]).max() > 1e-3


def test_init_follows_edm():
  """kaiming-uniform * sqrt(1/3) weights and biases, zero conv1 / proj / out_conv,
  kaiming-normal * sqrt(label_dim) map_label, and logical axis names kept."""
  module = adm.DhariwalUNet(**TINY)
  boxed = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)),
                      jnp.zeros((1, 10)), jnp.zeros((1, 9)))["params"]
  assert boxed["dec_4x4_in0"]["conv0"]["kernel"].names == (
      "conv_h", "conv_w", "conv_in", "conv_out")
  flat = weights.flatten(jax.tree.map(np.asarray, models.nn.meta.unbox(boxed)))
  for name in ("dec_4x4_in0.conv1.kernel", "dec_4x4_in0.attn.proj.bias", "out_conv.kernel",
               "out_conv.bias", "map_augment.kernel"):
    assert not flat[name].any(), name
  conv0 = flat["dec_8x8_block0.conv0.kernel"]          # fan_in = 3 * 3 * 24
  bound = 1 / np.sqrt(3 * 3 * 24)
  assert np.abs(conv0).max() <= bound and np.abs(conv0).max() > 0.9 * bound
  bias = flat["dec_8x8_block0.conv0.bias"]
  assert np.abs(bias).max() <= bound and bias.any()
  assert 0.8 < flat["map_label.kernel"].std() < 1.2   # N(0, 1/10) * sqrt(10)
  assert (flat["out_norm.scale"] == 1).all() and not flat["out_norm.bias"].any()


def test_official_pickle_converts(golden):
  network = load_network(PICKLE)
  assert network.model_class == "DhariwalUNet" and network.precond.formulation == "edm"
  assert network.converted.model_config == dict(
      name="adm", model_channels=8, channel_mult=(1, 2), channel_mult_emb=4, num_blocks=1,
      attn_resolutions=(4,), dropout=0.1, label_dropout=0.0, augment_dim=9,
      channels_per_head=4)
  built = models.build_model(network.converted.model_config, image_shape=(8, 8, 3),
                             num_classes=10)
  assert built == network.converted.module
  D = official_denoiser(PICKLE)
  d = D(golden["x"], golden["pkl/sigma"], golden["class_labels"])
  np.testing.assert_allclose(np.asarray(d), golden["pkl/D"], rtol=RTOL, atol=ATOL)
  d = D(golden["x"], golden["pkl/sigma"], None)
  np.testing.assert_allclose(np.asarray(d), golden["pkl/D_no_labels"], rtol=RTOL, atol=ATOL)


def test_converted_workdir_restores_the_official_network(tmp_path, golden):
  """`convert` writes a workdir whose config builds 'adm' and whose restored EMA weights,
  through jaxdiff's EDM preconditioning, give the official D(x; sigma)."""
  from jaxdiff import config as config_lib
  from jaxdiff.commands import sample
  from jaxdiff.convert import convert
  from jaxdiff.diffusion import precond as precond_lib
  from jaxdiff.train.experiment import Experiment
  wd = str(tmp_path / "converted")
  assert convert(PICKLE, wd)["status"] == "fresh"
  config = config_lib.workdir_config(wd)
  assert config.model.name == "adm" and config.model.channels_per_head == 4
  # No imagenet_8x8 here: generated 8x8x3 10-class data stands in (only shapes are read).
  config.data.tfds_name, config.data.data_dir = "synthetic", str(tmp_path / "data")
  state, _ = sample.restore(Experiment(config), wd)
  model = models.build_model(config.model, image_shape=(8, 8, 3), num_classes=10)
  apply_fn = lambda p, x, c, labels, *_: model.apply({"params": p}, x, c, labels)
  d = precond_lib.denoise(apply_fn, jax.device_get(state.ema_params), golden["x"],
                          golden["pkl/sigma"], class_labels=golden["class_labels"])
  np.testing.assert_allclose(np.asarray(d), golden["pkl/D"], rtol=RTOL, atol=ATOL)
