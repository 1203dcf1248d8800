"""The `stf` objective: EDM's loss with y replaced by the Stable Target Field.

Xu, Tong, Jaakkola (ICLR 2023, arXiv 2302.00670; docs/stf.md); official code
Newbeeer/stf (a fork of NVlabs/edm). The loss is EDM's (docs/edm.md),

    lambda(sigma) * ||D(x; sigma) - T(x)||^2,   T(x) = sum_i w_i(x) y_i,

with w = softmax_i(-||x - y_i||^2 / (2 sigma^2)) over a reference set that
contains the generating image (`target.stf_target`). Noise levels come from the
objective's noise sampler, so STF composes with the difficulty curriculum like
any objective.

The reference set of a step (docs/stf.md#the-reference-set-in-jaxdiff): the minibatch's own
images (as the network sees them, i.e. after the pipeline's augmentation) plus
fresh draws from the data pipeline (`batch["reference"]`, an index stream
independent of the minibatch, augmented independently). `config.stf.reference_size`
is n, the number of references a sample's weights are normalised over,
*including* the minibatch images, as the official `--rbatch` counts it (the
loader yields rbatch images per GPU, the first batch/world of which are the
minibatch).

Two ways to form the set on a mesh (`config.stf.mode`):

  per_device  The official behaviour: each device uses its own slice of the
              minibatch plus its own n - B/D reference draws, so n is per
              device and the pipeline draws D * n - B extra examples per step.
              Implemented as `stf_target` inside `jax.shard_map` over the batch
              axes ("data", "fsdp").
  global      One set of n = B + extra examples, sharded over the batch axes;
              every sample's weights are normalised over the whole global set
              with a sharded distance matmul and a cross-device log-sum-exp
              (`target.stf_target_global`); no device holds the whole set. The
              pipeline draws n - B extra examples per step.

For class-conditional data (`data.num_classes > 0`) with
`stf.restrict_labels`, only references with the sample's label count (the
official code is unconditional only; docs/stf.md#class-conditional-data).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxdiff import parallel
from jaxdiff.data.pipeline import REFERENCE_CLASSES
from jaxdiff.errors import ConfigError
from jaxdiff.objectives.edm import EDMObjective
from jaxdiff.objectives.registry import register
from jaxdiff.objectives.stf import target as stf

MODES = ("per_device", "global")


def reference_draws(reference_size: int, mode: str, batch_size: int, num_devices: int) -> int:
  """Extra examples the pipeline draws per step, over all processes.

  per_device: each of the D devices completes its B/D minibatch images to n;
  global: the one global set of n holds the B minibatch images.
  """
  if mode == "per_device":
    return num_devices * (reference_size - batch_size // num_devices)
  return reference_size - batch_size


# The `stf` config section (shared with SCT, whose target is this one).
CONFIG = {"stf": dict(
    # n, the size of the reference set each sample's weights are normalised over,
    # counting the minibatch images it contains (official `--rbatch`: 4096 in
    # train.py, 1024 for the published models). per_device: per device, as the
    # official per-GPU rbatch; global: over the whole mesh.
    reference_size=4096,
    # "per_device" (official): each device's own batch shard + reference draws.
    # "global": one reference set sharded over the batch axes, normalised globally.
    mode="per_device",
    # Class-conditional data: only same-label references count (docs/stf.md).
    restrict_labels=True,
    # "iid" (official): draws from the whole dataset, so with C classes about 1/C of
    # them share a sample's class. "same_class" (ours, for SCT's conditional runs):
    # each minibatch row gets reference_size / per-device batch - 1 draws of its own
    # class (docs/stf.md#class-conditional-data).
    reference_classes="iid",
)}


def validate_stf_config(config, num_devices: int | None = None) -> None:
  """Raises ConfigError naming the stf key, its value and the fix."""
  s = config.stf
  if s.mode not in MODES:
    raise ConfigError(f"config.stf.mode={s.mode!r} is not allowed; choose one of {MODES}.")
  n = s.reference_size
  if not isinstance(n, int) or isinstance(n, bool) or n < 1:
    raise ConfigError(f"config.stf.reference_size={n!r} must be an integer >= 1 (the official "
                      "default is 4096, the published models use 1024).")
  if s.reference_classes not in REFERENCE_CLASSES:
    raise ConfigError(f"config.stf.reference_classes={s.reference_classes!r} is not allowed; "
                      f"choose one of {REFERENCE_CLASSES}.")
  if s.reference_classes == "same_class" and not (config.data.num_classes and s.restrict_labels):
    raise ConfigError(
        "config.stf.reference_classes='same_class' draws references of each sample's class; "
        "it needs class labels (config.data.num_classes > 0) and config.stf.restrict_labels="
        "True, or use reference_classes='iid'.")
  if num_devices is None:
    return
  batch = config.data.batch_size
  if s.reference_classes == "same_class":
    group = batch // num_devices if s.mode == "per_device" else batch
    if n % group:
      raise ConfigError(
          f"config.stf.reference_size={n}: same-class references come in equal groups per "
          f"minibatch row, so it must be a multiple of the {s.mode} batch {group} (here "
          f"{max(n // group, 1) * group} or {(n // group + 1) * group}).")
  if s.mode == "per_device":
    local = batch // num_devices
    if n < local:
      raise ConfigError(
          f"config.stf.reference_size={n} is smaller than the per-device batch {local} "
          f"(config.data.batch_size={batch} over {num_devices} devices); in per_device mode the "
          f"reference set contains the device's minibatch images, so use at least {local}.")
  else:
    if n < batch:
      raise ConfigError(
          f"config.stf.reference_size={n} is smaller than config.data.batch_size={batch}; in "
          f"global mode the reference set contains the whole minibatch, so use at least {batch}.")
    if (n - batch) % num_devices:
      lower = batch + (n - batch) // num_devices * num_devices
      raise ConfigError(
          f"config.stf.reference_size={n}: in global mode the {n - batch} draws beyond the "
          f"minibatch are sharded over the {num_devices} devices and must divide evenly; use "
          f"{lower} or {lower + num_devices}.")


@register("stf")
class STFObjective(EDMObjective):
  """EDM loss with the Stable Target Field target (see the module docstring)."""

  config_keys = CONFIG
  # The reference set holds the minibatch's own images: a microbatch would change it.
  per_example_loss = False

  def __init__(self, apply_fn, noise_sampler, *, sigma_data: float = 0.5, num_classes: int = 0,
               reference_size: int = 4096, mode: str = "per_device",
               restrict_labels: bool = True, batch_size: int, reference_classes: str = "iid",
               formulation: str = "edm"):
    super().__init__(apply_fn, noise_sampler, sigma_data=sigma_data, num_classes=num_classes,
                     formulation=formulation)
    if mode not in MODES:
      raise ValueError(f"mode={mode!r}; choose one of {MODES}.")
    self.reference_size = int(reference_size)
    self.mode = mode
    self.use_labels = bool(restrict_labels) and bool(num_classes)
    self.batch_size = int(batch_size)
    self.reference_classes = reference_classes

  @classmethod
  def validate_config(cls, config, num_devices=None):
    validate_stf_config(config, num_devices)

  @classmethod
  def from_config(cls, config, apply_fn, example_shape, noise_sampler, mesh=None):
    validate_stf_config(config)
    return cls(apply_fn, noise_sampler, sigma_data=config.objective.sigma_data,
               num_classes=config.data.num_classes, reference_size=config.stf.reference_size,
               mode=config.stf.mode, restrict_labels=config.stf.restrict_labels,
               batch_size=config.data.batch_size,
               reference_classes=config.stf.reference_classes,
               formulation=config.objective.formulation)

  @property
  def num_devices(self) -> int:
    """Devices the batch is split over (the whole mesh: axes data x fsdp)."""
    if self.mesh is None:
      return 1
    return math.prod(int(self.mesh.shape[a]) for a in parallel.BATCH_AXES)

  @property
  def reference_draws(self) -> int:
    return reference_draws(self.reference_size, self.mode, self.batch_size, self.num_devices)

  def target(self, x_noisy, sigma, batch, aux, key):
    arrays = {"x": x_noisy, "sigma": sigma, "image": batch["image"]}
    if self.use_labels:
      arrays["label"] = batch["label"]
    if self.reference_draws:
      arrays["reference"] = batch["reference"]
      if self.use_labels:
        arrays["reference_label"] = batch["reference_label"]
    if self.mesh is None:
      # No mesh: one device holds everything, so both modes are the plain
      # computation over minibatch + draws.
      return _target_local(arrays)
    axes = parallel.BATCH_AXES
    if self.mode == "per_device":
      fn = _target_local
    else:
      fn = lambda a: _target_global(a, axes)
    # Every input is split along its leading (batch or reference) axis.
    return jax.shard_map(fn, mesh=self.mesh, in_specs=(P(axes),), out_specs=P(axes))(arrays)


def _reference_set(arrays):
  """This shard's references: its minibatch images first, then its draws."""
  ref = arrays["image"]
  labels = arrays.get("label")
  if "reference" in arrays:
    ref = jnp.concatenate([ref, arrays["reference"].astype(ref.dtype)], axis=0)
    if labels is not None:
      labels = jnp.concatenate([labels, arrays["reference_label"].astype(labels.dtype)], axis=0)
  return ref, labels


def _target_local(arrays):
  ref, ref_labels = _reference_set(arrays)
  return stf.stf_target(arrays["x"], arrays["sigma"], ref, arrays.get("label"), ref_labels)


def _target_global(arrays, axes):
  ref, ref_labels = _reference_set(arrays)
  return stf.stf_target_global(arrays["x"], arrays["sigma"], ref, axis_name=axes,
                               labels=arrays.get("label"), reference_labels=ref_labels,
                               queries_sharded=True)
