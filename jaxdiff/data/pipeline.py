"""Deterministic, per-process input: the batch of step s is a pure function of (seed, s).

That is what makes resume exact without storing an iterator: the data position
*is* the step. Each process reads only its own slice of the global batch (the
slice that lands on its devices), and the trainer assembles the global array
with `jax.make_array_from_process_local_data`.

A dataset here is any object with `num_examples`, `example_shape` and
`get(indices) -> dict[str, np.ndarray]` (random access, like a
`tfds.data_source`); finite datasets are visited epoch by epoch in a seeded
permutation. Toy 2-D data is an infinite stream drawn from (seed, step,
process).
"""
from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

from jaxdiff.data import builtin


class RandomAccessDataset(Protocol):
  num_examples: int
  example_shape: tuple[int, ...]

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    ...


@dataclasses.dataclass
class InMemoryDataset:
  """Images (NHWC float32 in [-1, 1]) and optional integer labels held in memory."""
  images: np.ndarray
  labels: np.ndarray | None = None

  @property
  def num_examples(self) -> int:
    return len(self.images)

  @property
  def example_shape(self) -> tuple[int, ...]:
    return tuple(self.images.shape[1:])

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    out = {"image": self.images[indices]}
    if self.labels is not None:
      out["label"] = self.labels[indices]
    return out


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


def global_batch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
  """Dataset indices of the global batch of `step`: consecutive slices of seeded epochs."""
  start = step * batch_size
  out = np.empty(batch_size, dtype=np.int64)
  filled = 0
  while filled < batch_size:
    epoch, offset = divmod(start + filled, n)
    take = min(batch_size - filled, n - offset)
    out[filled:filled + take] = epoch_permutation(seed, epoch, n)[offset:offset + take]
    filled += take
  return out


@dataclasses.dataclass
class StepBatcher:
  """Produces this process's part of the global batch of any step.

  `process_slice` is (start, stop) within the global batch; the trainer
  derives it from the mesh so each process reads exactly the rows that land
  on its own devices.
  """
  dataset: RandomAccessDataset | None
  global_batch_size: int
  seed: int
  process_slice: tuple[int, int]
  toy2d_distribution: str | None = None
  random_flip: bool = False

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    lo, hi = self.process_slice
    if self.toy2d_distribution is not None:
      # An infinite stream: a fresh draw per (seed, step, slice start).
      points = builtin.toy2d_sample(self.toy2d_distribution, hi - lo, [self.seed, step, lo])
      return {"image": points}
    indices = global_batch_indices(self.seed, step, self.global_batch_size,
                                   self.dataset.num_examples)[lo:hi]
    batch = self.dataset.get(indices)
    if self.random_flip:
      flip = np.random.default_rng([self.seed, step, lo, 0xF11B]).random(hi - lo) < 0.5
      batch["image"] = np.where(flip[:, None, None, None], batch["image"][:, :, ::-1], batch["image"])
    return batch


def make_dataset(data_config) -> tuple[RandomAccessDataset | None, tuple[int, ...]]:
  """The dataset named by the config and the shape of one example."""
  name = data_config.name
  if name == "toy2d":
    return None, (2,)
  if name == "digits":
    images, labels = builtin.load_digits_images()
    ds = InMemoryDataset(images, labels if data_config.num_classes else None)
    _check_shape(ds.example_shape, data_config)
    return ds, ds.example_shape
  if name == "tfds":
    from jaxdiff.data import tfds_source  # pragma: no cover - optional path
    ds = tfds_source.open_dataset(data_config)
    _check_shape(ds.example_shape, data_config)
    return ds, ds.example_shape
  raise ValueError(f"config.data.name={name!r} is unknown.")


def _check_shape(shape, data_config) -> None:
  expected = (data_config.image_size, data_config.image_size, data_config.channels)
  if tuple(shape) != expected:
    raise ValueError(
        f"The dataset {data_config.name!r} has examples of shape {tuple(shape)}, but the config "
        f"expects {expected} (config.data.image_size={data_config.image_size}, "
        f"config.data.channels={data_config.channels}); set those keys to match the data.")
