"""Samples of a run: one sampler dispatch for the loop, `--mode=sample` and FID.

Every caller samples through the objective (`Objective.sample(params, latents,
labels, key, config.sample)`) with the weights it chooses (`sampling_params`):
the grids, PNG/NPZ files and the final quality figure of training, the
`--mode=sample` command and FID's per-seed generator all draw images the same way.
Class-conditional models get random labels, as EDM's generate.py does.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jaxdiff import console, parallel, visualize
from jaxdiff.evaluation import quality


def sampling_params(exp, state, use_ema: bool = True):
  """The weights the sampler gets; an objective may add its state (SCT's guidance snapshot,
  ACT's teacher)."""
  params = state.ema_params if use_ema else state.params
  return exp.objective.sampling_params(params, state.aux)


def random_labels(key, batch: int, num_classes: int, dtype=jnp.float32):
  """One-hot random class labels (None for an unconditional model)."""
  if not num_classes:
    return None
  return jax.nn.one_hot(jax.random.randint(key, (batch,), 0, num_classes), num_classes,
                        dtype=dtype)


def make_sample_fn(exp):
  """(params, latents, key) -> samples, jitted and sharded over the batch axes; params are
  `sampler_params(exp, weights)` (decoded images on latent data)."""
  objective, sample_config, num_classes = exp.objective, exp.config.sample, exp.num_classes

  def sample(params, latents, key):
    k_label, k_noise = jax.random.split(key)
    labels = random_labels(k_label, latents.shape[0], num_classes, latents.dtype)
    return objective.sample(params, latents, labels, k_noise, sample_config)

  shard = parallel.batch_sharding(exp.mesh, 1 + len(exp.example_shape))
  return jax.jit(decoded(exp, sample), out_shardings=shard), shard


def decoded(exp, sampler: Callable) -> Callable:
  """`sampler` (params first), whose output a latent dataset's autoencoder decodes into
  images; then it takes `sampler_params(exp, params)`, so the autoencoder's weights are
  arguments of the jitted program, not constants baked into it. Pixel data: `sampler`."""
  if exp.decoder is None:
    return sampler
  decode = exp.decoder.decode_fn()

  def sample(params, *args):
    return decode(params["autoencoder"], sampler(params["model"], *args))
  return sample


def sampler_params(exp, params):
  """The params argument of a `decoded` sampler."""
  if exp.decoder is None:
    return params
  return {"model": params, "autoencoder": exp.decoder.params}


def per_seed_sampler(objective, sample_config) -> Callable:
  """(params, latents[B], labels[B] | None, keys[B]) -> images[B], one sample per seed.

  A deterministic sampler runs batched: the network treats every image on its
  own (group norm, attention and labels are per sample), so each image depends
  on its own latent and label only. A sampler that draws fresh noise runs per
  sample under `vmap`, so that noise comes from the image's own seed too.
  """
  def run(params, latents, labels, key):
    return objective.sample(params, latents, labels, key, sample_config)

  def sample(params, latents, labels, keys):
    if not objective.sampler_draws_noise:
      return run(params, latents, labels, None)

    def one(z, y, k):
      return run(params, z[None], None if y is None else y[None], k)[0]

    if labels is None:
      return jax.vmap(lambda z, k: one(z, None, k))(latents, keys)
    return jax.vmap(one)(latents, labels, keys)

  return sample


def generate(exp, params, num_samples: int, seed: int = 0) -> np.ndarray:
  """num_samples samples as a host numpy array; latents are a function of `seed` only.

  On a latent dataset the samples are decoded into images inside the sampler (`decoded`)."""
  sample_fn, shard = make_sample_fn(exp)
  n_dev = exp.mesh.size
  padded = -(-num_samples // n_dev) * n_dev
  key = jax.random.PRNGKey(seed)
  latents = jax.random.normal(jax.random.fold_in(key, 0), (padded,) + tuple(exp.example_shape))
  latents = jax.device_put(latents, shard)
  out = sample_fn(sampler_params(exp, params), latents, jax.random.fold_in(key, 1))
  if jax.process_count() > 1:
    out = multihost_utils.process_allgather(out, tiled=True)
  return np.asarray(jax.device_get(out))[:num_samples]


def save_sample_outputs(config, samples: np.ndarray, directory: str, stem: str,
                        writer=None, step: int = 0) -> dict:
  """`<stem>.png` (a grid, or a scatter plot over the data for 2-D points) and `<stem>.npz`."""
  os.makedirs(directory, exist_ok=True)
  png = os.path.join(directory, stem + ".png")
  if config.data.name == "toy2d":
    from jaxdiff.data import builtin
    reference = builtin.toy2d_sample(config.data.toy2d_distribution, 4000, [config.seed, 999])
    visualize.save_scatter(png, samples, reference, title=stem)
  else:
    visualize.save_image_grid(png, samples[:64])
    if writer is not None:
      writer.write_image(step, "samples", visualize.image_grid(samples[:64]))
  npz = os.path.join(directory, stem + ".npz")
  np.savez_compressed(npz, samples=samples)
  return {"samples_png": png, "samples_npz": npz}


def write_samples(exp, state, workdir: str, step: int, writer, final: bool = False,
                  use_ema: bool = True) -> dict:
  """The samples of a training step; at the end also the run's quality figure."""
  params = sampling_params(exp, state, use_ema)
  n = exp.config.eval.num_samples if final else exp.config.sample.num_samples
  samples = generate(exp, params, n, seed=exp.config.seed + 12345)
  out: dict[str, Any] = {}
  if jax.process_index() == 0:
    out.update(save_sample_outputs(exp.config, samples, os.path.join(workdir, "samples"),
                                   f"step_{step:07d}", writer, step))
  if final:
    name, value = quality.quality_figure(exp.config, samples)
    out["quality"] = {"name": name, "value": value, "num_samples": n}
    writer.write(step, {f"quality/{name}": value})
    console.log(f"quality: {name} = {value:.4f} ({n} samples, EMA weights) at step {step}")
  return out
