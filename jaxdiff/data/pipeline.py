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

from jaxdiff.data import builtin, latents
from jaxdiff.errors import ConfigError


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

  def all_labels(self) -> np.ndarray:
    if self.labels is None:
      raise ValueError("same-class references need a labelled dataset (config.data.num_classes)")
    return self.labels

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    out = {"image": self.images[indices]}
    if self.labels is not None:
      out["label"] = self.labels[indices]
    return out


# Index stream of the extra reference examples some objectives (STF) draw every
# step: its own seeded permutations, independent of the minibatch stream.
REFERENCE_STREAM = 0x57F
# "iid": the step's references are the next slice of the reference stream (STF's
# official draw). "same_class": row i of the global minibatch gets k = draws / batch
# references of its own class, laid out row-major, so that each process and device
# holds its own rows' references (docs/stf.md#class-conditional-data).
REFERENCE_CLASSES = ("iid", "same_class")


def epoch_permutation(seed: int, epoch: int, n: int, stream: int | None = None) -> np.ndarray:
  entropy = [seed, epoch, 0x5EED] if stream is None else [seed, epoch, 0x5EED, stream]
  return np.random.default_rng(entropy).permutation(n)


def global_batch_indices(seed: int, step: int, batch_size: int, n: int,
                         stream: int | None = None) -> np.ndarray:
  """Dataset indices of the global batch of `step`: consecutive slices of seeded epochs.

  `stream` (None: the minibatch) selects an independent family of permutations.
  """
  start = step * batch_size
  out = np.empty(batch_size, dtype=np.int64)
  filled = 0
  while filled < batch_size:
    epoch, offset = divmod(start + filled, n)
    take = min(batch_size - filled, n - offset)
    out[filled:filled + take] = epoch_permutation(seed, epoch, n, stream)[offset:offset + take]
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
  # Extra reference examples per step (STF), over all processes: returned as
  # 'reference' (+ 'reference_label') next to the minibatch. `reference_slice`
  # is this process's (start, stop) of them; None: the same fraction of the
  # global count as `process_slice` is of the global batch.
  num_reference: int = 0
  reference_slice: tuple[int, int] | None = None
  reference_classes: str = "iid"

  def __post_init__(self):
    if self.reference_classes not in REFERENCE_CLASSES:
      raise ValueError(f"reference_classes={self.reference_classes!r} is not one of "
                       f"{REFERENCE_CLASSES}")
    if self.reference_classes == "same_class" and self.num_reference % self.global_batch_size:
      raise ValueError(f"same-class references: {self.num_reference} draws per step are not a "
                       f"multiple of the batch {self.global_batch_size}")
    self._members = None
    if self.num_reference and self.reference_slice is None:
      lo, hi = self.process_slice
      b, e = self.global_batch_size, self.num_reference
      if (lo * e) % b or (hi * e) % b:
        raise ValueError(
            f"{e} reference examples per step cannot be split across processes like the batch "
            f"slice {self.process_slice} of {b}; use a multiple of the process count.")
      self.reference_slice = (lo * e // b, hi * e // b)

  def global_sizes(self) -> dict[str, int]:
    """Leading (global) size of every key this batcher returns."""
    sizes = {"image": self.global_batch_size, "label": self.global_batch_size}
    if self.num_reference:
      sizes.update(reference=self.num_reference, reference_label=self.num_reference)
    return sizes

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    lo, hi = self.process_slice
    if self.toy2d_distribution is not None:
      # An infinite stream: a fresh draw of the whole global batch per (seed,
      # step), sliced, so the data do not depend on the process count (a
      # 2-process job trains on exactly the batches of a 1-process one).
      points = builtin.toy2d_sample(self.toy2d_distribution, self.global_batch_size,
                                    [self.seed, step, 0])[lo:hi]
      batch = {"image": points}
    else:
      indices = global_batch_indices(self.seed, step, self.global_batch_size,
                                     self.dataset.num_examples)[lo:hi]
      batch = self.dataset.get(indices)
      flip = None
      if self.random_flip:
        # Drawn for the whole global batch, then sliced: a row's flip does not
        # depend on how many processes share the batch.
        flip = (np.random.default_rng([self.seed, step, 0xF11B]).random(self.global_batch_size)
                < 0.5)[lo:hi]
      if latents.is_latent_batch(batch):
        # Posterior moments: a fresh draw per step (the mirror's moments where flipped).
        eps = latents.posterior_eps(self.seed, step, self.global_batch_size,
                                    self.dataset.example_shape, lo, hi)
        batch = latents.posterior_sample(batch, flip, eps)
      elif flip is not None:
        batch["image"] = np.where(flip[:, None, None, None], batch["image"][:, :, ::-1],
                                  batch["image"])
    if self.num_reference:
      batch.update(self.references(step))
    return batch

  def references(self, step: int) -> dict[str, np.ndarray]:
    """This process's part of the step's extra reference examples.

    A pure function of (seed, step), independent of the minibatch stream and of
    the process count: every process slices the same global draw, so the slices
    are disjoint and together form the global reference batch. Augmentation
    (random flip) is drawn independently of the minibatch's, as in the official
    STF code (docs/stf.md#reference-set-construction).
    """
    rlo, rhi = self.reference_slice
    e = self.num_reference
    if self.reference_classes == "same_class":
      indices = self.same_class_indices(step)[rlo:rhi]
    elif self.toy2d_distribution is not None:
      points = builtin.toy2d_sample(self.toy2d_distribution, e,
                                    [self.seed, step, REFERENCE_STREAM])
      return {"reference": points[rlo:rhi]}
    else:
      indices = global_batch_indices(self.seed, step, e, self.dataset.num_examples,
                                     stream=REFERENCE_STREAM)[rlo:rhi]
    drawn = self.dataset.get(indices)
    if latents.is_latent_batch(drawn):
      raise ConfigError("reference draws (STF's reference set) are not implemented for latent "
                        "datasets; train this objective on an image dataset.")
    out = {"reference": drawn["image"]}
    if "label" in drawn:
      out["reference_label"] = drawn["label"]
    if self.random_flip:
      flip = np.random.default_rng([self.seed, step, 0xF11B, REFERENCE_STREAM]).random(e) < 0.5
      flip = flip[rlo:rhi]
      out["reference"] = np.where(flip[:, None, None, None], out["reference"][:, :, ::-1],
                                  out["reference"])
    return out

  def same_class_indices(self, step: int) -> np.ndarray:
    """Dataset indices of the step's global same-class references, row-major: k for row 0
    of the global minibatch, then k for row 1, ... Each row's k are distinct examples of
    its class (all of them, repeated, if the class has fewer than k), a pure function of
    (seed, step) like the minibatch, so a resumed run draws the same ones."""
    if self._members is None:
      labels = np.asarray(self.dataset.all_labels())
      order = np.argsort(labels, kind="stable")
      starts = np.searchsorted(labels[order], np.arange(labels.max() + 2))
      self._members = (labels, [order[a:b] for a, b in zip(starts[:-1], starts[1:])])
    labels, members = self._members
    b = self.global_batch_size
    k = self.num_reference // b
    rows = labels[global_batch_indices(self.seed, step, b, len(labels))]
    rng = np.random.default_rng([self.seed, step, REFERENCE_STREAM, 0xC1A55])
    out = np.empty((b, k), np.int64)
    for i, c in enumerate(rows):
      pool = members[c]
      pick = rng.choice(len(pool), size=k, replace=False) if len(pool) >= k else (
          np.resize(rng.permutation(len(pool)), k))
      out[i] = pool[pick]
    return out.reshape(-1)


class Prefetcher:
  """Computes `fn(step)` for the next `depth` steps in a background thread.

  The train loop asks `get(step)` for consecutive steps; the batch is usually
  ready (read, flipped and transferred to the devices) while the previous step
  still runs, because the loop syncs with the device every step. `fn` is a pure
  function of the step (e.g. `Experiment.global_batch`), so prefetching never
  changes which data a step sees; asking for an unexpected step restarts the
  worker there. An exception in the worker is raised by `get`.
  `wait_seconds` is the time `get` spent blocked: input-bound time.
  """

  def __init__(self, fn, start: int, depth: int = 2):
    import queue
    import threading
    self._fn, self._depth = fn, max(1, int(depth))
    self._queue_cls, self._thread_cls, self._event_cls = queue.Queue, threading.Thread, \
        threading.Event
    self.wait_seconds = 0.0
    self._thread = None
    self._start_worker(int(start))

  def _start_worker(self, start: int) -> None:
    self._next = start
    self._queue = self._queue_cls(maxsize=self._depth)
    self._stop = self._event_cls()
    queue, stop, fn = self._queue, self._stop, self._fn

    def work():
      step = start
      while not stop.is_set():
        try:
          item = (step, fn(step), None)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
          item = (step, None, e)
        while not stop.is_set():
          try:
            queue.put(item, timeout=0.1)
            break
          except Exception:  # queue.Full: wait for the consumer
            continue
        if item[2] is not None:
          return
        step += 1

    self._thread = self._thread_cls(target=work, name="jaxdiff-prefetch", daemon=True)
    self._thread.start()

  def get(self, step: int):
    import time
    if step != self._next:
      self.close()
      self._start_worker(step)
    t0 = time.perf_counter()
    got, value, error = self._queue.get()
    self.wait_seconds += time.perf_counter() - t0
    if error is not None:
      self.close()
      raise error
    assert got == step, (got, step)
    self._next = step + 1
    return value

  def close(self) -> None:
    if self._thread is None:
      return
    self._stop.set()
    while True:  # unblock a worker waiting on a full queue
      try:
        self._queue.get_nowait()
      except Exception:  # queue.Empty
        break
    self._thread.join(timeout=10)
    self._thread = None


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


def declared_example_shape(data_config) -> tuple[int, ...]:
  """The shape of one example as the config declares it (no data is read)."""
  if data_config.name == "toy2d":
    return (2,)
  return (data_config.image_size, data_config.image_size, data_config.channels)


def _check_shape(shape, data_config) -> None:
  expected = declared_example_shape(data_config)
  if tuple(shape) != expected:
    raise ValueError(
        f"The dataset {data_config.name!r} has examples of shape {tuple(shape)}, but the config "
        f"expects {expected} (config.data.image_size={data_config.image_size}, "
        f"config.data.channels={data_config.channels}); set those keys to match the data.")
