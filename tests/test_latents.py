"""Latent data end to end (DiT's setting): encode once, train on posterior draws, decode samples.

Uses the generated tiny KL autoencoder of tests/goldens (widths 16/32/32: a factor-4
autoencoder, 8 GroupNorm groups) on generated 32x32 images, so everything runs on a CPU.
"""
import json
import os
import shutil

import numpy as np
import pytest

from jaxdiff import config as config_lib
from jaxdiff import prepare_data
from jaxdiff.data import builders, latents, pipeline
from jaxdiff.errors import ConfigError
from jaxdiff.train import loop

GOLDENS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "goldens")
NUM_IMAGES = 24


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """(data_dir, autoencoder file): 24 synthetic 32x32 images and their latents."""
  root = tmp_path_factory.mktemp("latents")
  vae_dir = root / "vae"
  vae_dir.mkdir()
  vae = vae_dir / "diffusion_pytorch_model.safetensors"
  shutil.copy(os.path.join(GOLDENS, "autoencoder_kl_tiny.safetensors"), vae)
  golden = np.load(os.path.join(GOLDENS, "autoencoder_kl_tiny.npz"))
  (vae_dir / "config.json").write_text(str(golden["config_json"]))  # its 8 groups
  data_dir = str(root / "data")
  prepare_data.prepare("synthetic", data_dir, resolution=32, name="synth32",
                       num_examples=NUM_IMAGES)
  prepare_data.encode("synth32_latents", "synth32", data_dir, str(vae), 0.18215, flip=True)
  return data_dir, str(vae)


def latent_config(data_dir, vae, **data):
  c = config_lib.load_config("digits_ddpm:smoke")
  c.data.name = "tfds"
  c.data.tfds_name = "synth32_latents"
  c.data.data_dir = data_dir
  c.data.image_size, c.data.channels, c.data.num_classes = 8, 4, 0
  c.data.batch_size = 8
  c.data.random_flip = True
  c.data.autoencoder = vae
  c.train.num_steps = 2
  c.sample.num_samples = 4
  c.eval.num_samples = 4
  for k, v in data.items():
    c.data[k] = v
  return c


def test_encoded_dataset_holds_the_scaled_moments_of_image_and_mirror(prepared):
  data_dir, vae_path = prepared
  from jaxdiff.data import tfds_source
  ds = pipeline.make_dataset(latent_config(data_dir, vae_path).data)[0]
  assert isinstance(ds, latents.LatentDataset)
  assert ds.example_shape == (8, 8, 4) and ds.num_examples == NUM_IMAGES
  assert ds.metadata["scale_factor"] == 0.18215 and ds.has_mirrors
  images = tfds_source.TfdsImageDataset(builders.dataset_dir(data_dir, "synth32"), False).get(
      np.arange(3))["image"]
  vae = latents.Autoencoder(vae_path, 0.18215)
  mean, std = vae.encode_fn()(vae.params, images)
  mean_f, _ = vae.encode_fn()(vae.params, images[:, :, ::-1])
  got = ds.get(np.arange(3))
  np.testing.assert_allclose(got["latent_mean"], mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["latent_std"], std, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["latent_mean_flipped"], mean_f, rtol=1e-5, atol=1e-6)


def test_batches_are_fresh_posterior_draws_a_function_of_the_step(prepared):
  data_dir, vae_path = prepared
  ds = pipeline.make_dataset(latent_config(data_dir, vae_path).data)[0]
  batcher = pipeline.StepBatcher(dataset=ds, global_batch_size=8, seed=0,
                                 process_slice=(0, 8), random_flip=True)
  a, again, other = batcher(3), batcher(3), batcher(4)
  np.testing.assert_array_equal(a["image"], again["image"])
  assert a["image"].shape == (8, 8, 8, 4) and a["image"].dtype == np.float32
  assert not np.allclose(a["image"], other["image"])
  # With eps = 0 a row is its mean, or its mirror's mean where the flip picked it.
  rows = ds.get(np.arange(4))
  flip = np.array([True, False, True, False])
  out = latents.posterior_sample(dict(rows), flip, np.zeros((4, 8, 8, 4), np.float32))
  np.testing.assert_array_equal(out["image"][flip], rows["latent_mean_flipped"][flip])
  np.testing.assert_array_equal(out["image"][~flip], rows["latent_mean"][~flip])


def test_training_on_latents_decodes_its_samples(prepared, tmp_path):
  data_dir, vae_path = prepared
  summary = loop.train(latent_config(data_dir, vae_path), str(tmp_path / "run"))
  assert summary["step"] == 2
  samples = np.load(os.path.join(tmp_path, "run", "samples", "step_0000002.npz"))["samples"]
  assert samples.shape == (4, 32, 32, 3)  # decoded images, not 8x8x4 latents
  assert np.all(np.isfinite(samples))


def test_latent_data_errors_name_the_fix(prepared, tmp_path):
  data_dir, vae_path = prepared
  from jaxdiff.train.experiment import Experiment
  with pytest.raises(ConfigError, match="data.autoencoder"):
    Experiment(latent_config(data_dir, vae_path, autoencoder=""))
  prepare_data.encode("synth32_plain", "synth32", data_dir, vae_path, 0.18215, flip=False)
  with pytest.raises(ConfigError, match="random_flip=False"):
    Experiment(latent_config(data_dir, vae_path, tfds_name="synth32_plain"))
  with pytest.raises(FileNotFoundError, match="encode_with"):
    prepare_data.encode("x", "synth32", data_dir, str(tmp_path / "missing.safetensors"),
                        0.18215, flip=False)
  from jaxdiff.train import fid
  c = latent_config(data_dir, vae_path)
  c.eval.inception_weights = "unused.npz"
  with pytest.raises(ConfigError, match="reference_stats"):
    fid.make_evaluator(Experiment(c))
  meta = json.load(open(os.path.join(builders.dataset_dir(data_dir, "synth32_latents"),
                                     "metadata.json")))
  assert meta.get("jaxdiff", meta)["layout"] == "moments+flipped"
