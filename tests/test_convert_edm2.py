"""Official NVlabs/edm2 pickles in jaxdiff (jaxdiff/convert/edm2.py, docs/convert.md#edm2).

Golden: tests/goldens/edm2_precond.pkl is the official Precond of tests/goldens/
edm2_forward.npz, pickled by the official code exactly as its training loop writes a snapshot
(an EasyDict of encoder, dataset_kwargs, loss_fn and the EMA network stored in float16, the
networks' Python source embedded); edm2_pickle_outputs.npz holds the official forward of
that float16-stored network (tests/goldens/make_edm2_goldens.py --pickle). jaxdiff reads it
with its restricted reader alone (no torch) and must reproduce it to float32 rounding
(measured 8.2e-7 relative; asserted 1e-5).
"""
import collections
import os
import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import config as config_lib
from jaxdiff import models
from jaxdiff import workdir as workdir_lib
from jaxdiff.convert import convert, edm2 as edm2_convert, load_network, official_denoiser
from jaxdiff.convert import read_pickle
from jaxdiff.diffusion import precond as precond_lib
from jaxdiff.errors import WeightsFileError
from tests.test_convert import Persistent, persistence  # noqa: F401  (fixture)

GOLDENS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "goldens")
PICKLE = os.path.join(GOLDENS, "edm2_precond.pkl")
RTOL = 1e-5


def inputs():
  g = np.load(os.path.join(GOLDENS, "edm2_forward.npz"))
  return g["x"], g["sigma"], g["class_labels"]


def official():
  return np.load(os.path.join(GOLDENS, "edm2_pickle_outputs.npz"))


def assert_close(out, ref):
  assert np.abs(np.asarray(out) - ref).max() <= RTOL * np.abs(ref).max()


def test_official_edm2_pickle_gives_the_official_denoiser_and_logvar():
  x, sigma, labels = inputs()
  d = official_denoiser(PICKLE)
  assert_close(d(x, sigma, labels), official()["D_x"])
  assert_close(d(x, sigma), official()["D_no_labels"])
  net = load_network(PICKLE)
  logvar = net.converted.module.apply({"params": net.converted.params},
                                      jnp.log(jnp.asarray(sigma)) / 4, method="log_variance")
  assert_close(logvar, official()["logvar"])
  assert net.precond.class_name == "Precond" and net.precond.formulation == "edm"
  assert net.converted.model_config["name"] == "edm2"


def test_the_edm2_pickle_is_read_as_records_and_its_source_never_runs():
  before = set(sys.modules)
  snap = read_pickle(PICKLE)
  assert sorted(snap) == ["dataset_kwargs", "ema", "encoder", "loss_fn"]
  assert snap["ema"].class_name == "Precond" and "class Precond" in snap["ema"].module_src
  assert snap["encoder"].class_name == "StandardRGBEncoder"
  assert not {m for m in set(sys.modules) - before if m.startswith(("training", "torch"))}


def test_float16_gains_are_folded_as_the_official_forward_rounds_them():
  """gain / sqrt(fan_in) of a float16 gain is rounded to float16 by the official forward;
  the folded float32 gain gives that rounded factor. float32 gains stay as they are."""
  weight = np.zeros((4, 9), np.float32)
  state = {"b.emb_gain": np.float16(0.9), "b.emb_linear.weight": weight,
           "c.emb_gain": np.float32(0.9), "c.emb_linear.weight": weight}
  out = edm2_convert.fold_half_precision_gains(state)
  assert np.float32(out["b.emb_gain"]) / np.float32(3) == pytest.approx(
      float(np.float16(np.float64(np.float16(0.9)) / 3)), rel=1e-7)
  assert out["b.emb_gain"] != np.float32(np.float16(0.9))   # here the rounding shows
  assert out["c.emb_gain"] is state["c.emb_gain"]


def test_converted_edm2_workdir_samples_the_official_network_and_tunes_from_it(tmp_path):
  wd = str(tmp_path / "edm2")
  assert convert(PICKLE, wd)["status"] == "fresh"
  config = config_lib.workdir_config(wd)
  assert config.model.name == "edm2" and config.objective.learned_uncertainty
  assert len(config.model.fourier_freqs) == 16 and len(config.model.logvar_phases) == 128
  # The workdir's own model (config.model) with the restored weights is the official network.
  shape = (16, 16, 3)
  model = models.build_model(config.model, image_shape=shape, num_classes=10)
  target = jax.eval_shape(lambda: load_network(PICKLE).converted.params)
  weights, _ = workdir_lib.read_init_weights(wd, config, target)
  apply_fn = lambda p, x, c, labels, *_: model.apply({"params": p}, x, c, labels)
  x, sigma, labels = inputs()
  assert_close(precond_lib.denoise(apply_fn, weights, x, sigma, class_labels=labels),
               official()["D_x"])
  # A tuning run's config leaves the Fourier constants empty: init_from hands them over.
  tuning = config_lib.workdir_config(wd)
  for key in workdir_lib.INHERITED_CONSTANTS:
    tuning.model[key] = ()
  tuning.init_from = wd
  workdir_lib.inherit_network_constants(tuning)
  for key in workdir_lib.INHERITED_CONSTANTS:
    assert tuple(tuning.model[key]) == tuple(config.model[key])
  workdir_lib.read_init_weights(wd, tuning, target)   # the architecture check passes


def test_a_latent_edm2_model_is_refused_by_name(tmp_path, persistence):  # noqa: F811
  net = Persistent("Precond", dict(img_resolution=64, img_channels=4, label_dim=1000,
                                   use_fp16=True, sigma_data=0.5,
                                   _modules=collections.OrderedDict()))
  path = tmp_path / "edm2-img512-xs.pkl"
  path.write_bytes(pickle.dumps(dict(ema=net, encoder=Persistent("StabilityVAEEncoder", {}))))
  with pytest.raises(WeightsFileError, match="latent-space model.*StabilityVAEEncoder"):
    load_network(str(path))


def test_a_modified_edm2_network_is_named(tmp_path, persistence):  # noqa: F811
  unet = Persistent("UNet", dict(_modules=collections.OrderedDict(),
                                 _init_kwargs=dict(model_channels=16, my_new_layer=3)))
  net = Persistent("Precond", dict(img_resolution=16, img_channels=3, label_dim=10,
                                   use_fp16=False, sigma_data=0.5,
                                   _modules=collections.OrderedDict(unet=unet)))
  path = tmp_path / "modified.pkl"
  path.write_bytes(pickle.dumps(dict(ema=net)))
  with pytest.raises(WeightsFileError, match=r"\['my_new_layer'\] are not the official"):
    load_network(str(path))
