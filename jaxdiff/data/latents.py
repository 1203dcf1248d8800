"""Training in an autoencoder's latent space, as DiT and SiT do (docs/latents.md).

  # once: encode a prepared image dataset with a KL autoencoder file you supply
  python -m jaxdiff.prepare_data --dataset=imagenet256 --encode_with=sd-vae-ft-ema.safetensors
  # train on it; samples are decoded with the same file for PNGs and FID
  python -m jaxdiff.main --config=configs/imagenet256_dit.py --workdir=runs/dit

Three pieces, one idea each:

  encode_dataset   a prepared image dataset -> a latent dataset of the posterior moments
                   (mean and std, times the scale factor), optionally also of each image's
                   mirror, written once through the same tfds ArrayRecord builder;
  LatentDataset    what the trainer reads: `get` returns the moments, and the batcher draws
                   z = mean + std * eps per example and step (`posterior_sample`), which is
                   DiT's `vae.encode(x).latent_dist.sample() * 0.18215` every step, with the
                   mirror's moments for rows the random flip picks (DiT flips the image
                   before encoding);
  Autoencoder      the converted network: `encode_fn` for encoding, `decode_fn` (latents /
                   scale -> images in [-1, 1]), which the samplers of sample grids,
                   `--mode=sample` and FID apply inside their jitted programs
                   (train/samples.py `decoded`).

Latents never pass through uint8: they are float32 on disk and in the batch.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.data import builders
from jaxdiff.errors import ConfigError, DatasetFormatError

# What the stored channels hold, in order, for each layout.
LAYOUTS = {
    "moments": ("mean", "std"),
    "moments+flipped": ("mean", "std", "mean_flipped", "std_flipped"),
}
# The eps stream of the per-step posterior draws (independent of the flips' 0xF11B).
POSTERIOR_STREAM = 0x1A7E


class Autoencoder:
  """A KL autoencoder converted from a weights file (jaxdiff.convert.autoencoder_kl)."""

  def __init__(self, path: str, scale_factor: float):
    from jaxdiff.convert import autoencoder_kl as convert
    from jaxdiff.models import autoencoder_kl
    self.path = path
    self.config, params = convert.load_autoencoder_kl(path)
    self.module = autoencoder_kl.AutoencoderKL(**self.config)
    self.params = jax.device_put(params)
    self.scale_factor = float(scale_factor)
    self.downsample = 2 ** (len(self.config["block_out_channels"]) - 1)
    self.latent_channels = int(self.config["latent_channels"])

  def encode_fn(self):
    """(vae params, images [-1, 1]) -> (scale * mean, scale * std): pure, for jit."""
    module, s = self.module, self.scale_factor

    def encode(params, images):
      mean, logvar = module.apply({"params": params}, images, method="encode")
      return mean * s, jnp.exp(0.5 * logvar) * s
    return encode

  def decode_fn(self):
    """(vae params, scaled latents) -> images in [-1, 1]: pure, for jit."""
    module, s = self.module, self.scale_factor

    def decode(params, z):
      return module.apply({"params": params}, z / s, method="decode")
    return decode


@functools.lru_cache(maxsize=2)
def load_autoencoder(path: str, scale_factor: float) -> Autoencoder:
  """One converted autoencoder per (file, scale) in a process (converting takes seconds)."""
  return Autoencoder(path, scale_factor)


# ------------------------------------------------------------------ encoding, once


def encode_dataset(data_dir: str, source, source_name: str, vae_path: str, name: str,
                   scale_factor: float, flip: bool = True, batch_size: int = 32,
                   overwrite: bool = False) -> str:
  """Writes the latent dataset `name` of `source`, the prepared image dataset
  `source_name` (a `tfds_source.TfdsImageDataset`: `get_uint8`, `metadata`)."""
  vae = Autoencoder(vae_path, scale_factor)
  h, w, c = source.example_shape
  if c != vae.config["in_channels"] or h % vae.downsample or w % vae.downsample:
    raise DatasetFormatError(
        f"{source_name} has images of shape {(h, w, c)}; the autoencoder {vae_path} takes "
        f"{vae.config['in_channels']} channels and sizes divisible by {vae.downsample}. "
        "Prepare the images at a matching --resolution first.")
  layout = "moments+flipped" if flip else "moments"
  shape = (h // vae.downsample, w // vae.downsample,
           len(LAYOUTS[layout]) * vae.latent_channels)
  meta = source.metadata
  info = builders.ImageDatasetInfo(
      name, shape, int(meta.get("num_classes", 0)),
      source=f"{source_name} encoded with {os.path.basename(vae_path)}",
      transform=meta.get("transform", "none"), num_examples_hint=source.num_examples,
      dtype="float32",
      extra=(("layout", layout), ("latent_channels", vae.latent_channels),
             ("scale_factor", vae.scale_factor), ("image_shape", [h, w, c]),
             ("autoencoder", os.path.basename(vae_path)), ("source_dataset", source_name)))
  encode = jax.jit(vae.encode_fn())

  def examples():
    for start in range(0, source.num_examples, batch_size):
      rows = np.arange(start, min(start + batch_size, source.num_examples))
      raw = source.get_uint8(rows)
      images = raw["image"].astype(np.float32) / np.float32(127.5) - np.float32(1.0)
      parts = list(encode(vae.params, images))
      if flip:
        parts += list(encode(vae.params, images[:, :, ::-1]))
      moments = np.concatenate([np.asarray(p, np.float32) for p in parts], axis=-1)
      for i, row in enumerate(rows):
        yield f"{source_name}[{row}]", {"image": moments[i], "label": int(raw["label"][i])}

  print(f"encoding {source.num_examples} images of {source_name} with {vae_path} "
        f"(scale {vae.scale_factor}, {layout}) -> {name}", flush=True)
  return builders.write_dataset(data_dir, info, examples, overwrite=overwrite)


# ------------------------------------------------------------------ reading, every step


class LatentDataset:
  """A prepared latent dataset: `get` returns the posterior moments the batcher samples."""

  def __init__(self, moments_source, metadata: dict, path: str):
    layout = metadata.get("layout")
    if layout not in LAYOUTS:
      raise DatasetFormatError(f"{path}: unknown latent layout {layout!r}; re-encode it with "
                               "`python -m jaxdiff.prepare_data --encode_with=...`.")
    self.source, self.metadata, self.path = moments_source, metadata, path
    self.parts = LAYOUTS[layout]
    self.channels = int(metadata["latent_channels"])
    h, w, stored = moments_source.stored_shape
    if stored != len(self.parts) * self.channels:
      raise DatasetFormatError(f"{path}: {stored} stored channels do not hold {self.parts} of "
                               f"{self.channels} latent channels; re-encode the dataset.")
    self.example_shape = (h, w, self.channels)
    self.num_examples = moments_source.num_examples
    self.has_mirrors = "mean_flipped" in self.parts
    self.scale_factor = float(metadata["scale_factor"])

  def all_labels(self) -> np.ndarray:
    return self.source.all_labels()

  def get(self, indices) -> dict[str, np.ndarray]:
    raw = self.source.get_raw(indices)
    stored = raw.pop("image")
    c = self.channels
    out = {f"latent_{part}": stored[..., i * c:(i + 1) * c] for i, part in enumerate(self.parts)}
    out.update(raw)
    return out


def is_latent_batch(batch: dict) -> bool:
  return "latent_mean" in batch


def posterior_sample(batch: dict, flip: np.ndarray | None, eps: np.ndarray) -> dict:
  """The batch with `image` = mean + std * eps, using the mirrors' moments where `flip`."""
  mean, std = batch.pop("latent_mean"), batch.pop("latent_std")
  mirrored_mean, mirrored_std = batch.pop("latent_mean_flipped", None), batch.pop(
      "latent_std_flipped", None)
  if flip is not None:
    if mirrored_mean is None:
      raise ConfigError("config.data.random_flip=True, but the latent dataset holds no "
                        "mirrored moments; encode it with --latent_flip (the default) or set "
                        "--config.data.random_flip=False.")
    rows = flip[:, None, None, None]
    mean, std = np.where(rows, mirrored_mean, mean), np.where(rows, mirrored_std, std)
  batch["image"] = (mean + std * eps).astype(np.float32)
  return batch


def posterior_eps(seed: int, step: int, global_batch: int, example_shape, lo: int,
                  hi: int) -> np.ndarray:
  """The step's N(0, I) draws for the whole global batch, sliced to this process's rows."""
  rng = np.random.default_rng([seed, step, POSTERIOR_STREAM])
  return rng.standard_normal((global_batch,) + tuple(example_shape), np.float32)[lo:hi]


def output_decoder(data_config, dataset) -> Autoencoder | None:
  """The autoencoder that turns samples into images, for a latent dataset; else None."""
  if not isinstance(dataset, LatentDataset):
    return None
  path = data_config.autoencoder
  if not path:
    raise ConfigError(
        f"{dataset.path} holds latents; samples need its autoencoder to become images. Set "
        "--config.data.autoencoder=PATH to the weights file it was encoded with "
        f"({dataset.metadata.get('autoencoder')!r}).")
  return load_autoencoder(os.path.abspath(path), dataset.scale_factor)
