"""The contract every training objective fulfils: how a method plugs into jaxdiff.

A method is one class registered under its name (`objectives.registry`). The
class owns everything about its method, and the trainer, the samplers and the
config code never name a method:

  config      `config_sections()` the defaults of the config keys it owns,
              `validate_config(config, num_devices)` their checks,
              `noise_sampler(config)` its training noise-level distribution,
              `pretrain_config(config)` a run to train first (ECT's EDM phase);
  training    `loss`, `init_aux` / `after_update` for state it carries between
              steps (a teacher EMA, a discriminator), `reference_draws` for extra
              data it needs each step, `step_variants` for static variants of the
              update (one compiled executable each);
  probing     optional `probe_loss(params, x0, noise, level, labels)`: its own
              per-example training loss at a given noise and noise level, no
              randomness (denoising objectives: EDM, DDPM, flow matching). The
              curriculum's difficulty study (`--mode=analyze`) trains its probe
              model with an objective that has it and measures it per noise
              cluster; `probe_loss = None` (the default): the study uses EDM's;
  sampling    `sample(params, latents, labels, key, sample_config)`, the weights it
              samples with (`sampling_params`) and whether it draws noise.

The trainer owns the optimizer, the parameter EMA, sharding and checkpoints.
Noise levels come from a `NoiseSampler` handed in at construction, which is how
the difficulty curriculum plugs into every objective without touching it: a
curriculum stage is the same objective with its sampler restricted to some
noise clusters (`NoiseSampler.restrict`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

PyTree = Any
Metrics = dict[str, jax.Array]


# ------------------------------------------------------------------ noise levels

class NoiseSampler(Protocol):
  """Draws training noise levels. Hashable: a stage's sampler keys its compiled step.

  What the curriculum and the objectives may read from a sampler is exactly
  this interface:

    mask             the enabled curriculum clusters (cluster 0 = lowest noise), or
                     None for the whole distribution;
    cluster_kinds    the `curriculum.kind` values it can be clustered by;
    description      what it is, for messages;
    restrict(mask)   the same distribution restricted to `mask`'s clusters;
    quantiles(q)     noise levels at probabilities q (float64 numpy; loss buckets);
    in_enabled_clusters(sigma)
                     whether given noise levels fall in enabled clusters (objectives
                     on a fixed grid of noise levels, CT/iCT/ACT, mask their grid);
    probe_levels(num_clusters, per_cluster)
                     [N, M] noise levels (numpy) evenly covering each of its N
                     clusters, M per cluster, cluster 0 = lowest noise: the
                     difficulty study's fixed probe levels;
    cluster_ranges(num_clusters)
                     [(lo, hi)] of each cluster, half-open [lo, hi), in `units`;
    units            the name of its noise levels ("sigma", "t", "timestep"), and
    log_units        whether they are best shown on a log scale (reports).
  """
  mask: tuple[bool, ...] | None
  cluster_kinds: tuple[str, ...]
  description: str
  units: str
  log_units: bool

  def __call__(self, key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    ...

  def restrict(self, mask: tuple[bool, ...] | None) -> "NoiseSampler":
    ...

  def quantiles(self, q: np.ndarray) -> np.ndarray:
    ...

  def in_enabled_clusters(self, sigma: jax.Array) -> jax.Array:
    ...

  def probe_levels(self, num_clusters: int, per_cluster: int) -> np.ndarray:
    ...

  def cluster_ranges(self, num_clusters: int) -> list[tuple[float, float]]:
    ...


def probe_quantiles(num_clusters: int, per_cluster: int) -> np.ndarray:
  """[N, M] float64 probabilities (i + (m + 0.5) / M) / N: M evenly inside each of N
  equal-probability clusters (the probe levels of samplers uniform in some variable)."""
  i = np.arange(num_clusters, dtype=np.float64)[:, None]
  m = np.arange(per_cluster, dtype=np.float64)[None, :]
  return (i + (m + 0.5) / per_cluster) / num_clusters


@dataclasses.dataclass(frozen=True)
class LognormalSampler:
  """EDM's ln(sigma) ~ N(p_mean, p_std^2), optionally truncated to curriculum clusters.

  The clusters are the distribution's equal-probability quantile intervals
  (docs/curriculum.md); within the enabled ones sigma is drawn exactly (inverse
  CDF), and with every cluster enabled exactly as the untruncated baseline.
  `p_mean` and `p_std` are part of the interface: objectives that discretise
  this distribution on a grid (iCT) read them.
  """
  p_mean: float = -1.2
  p_std: float = 1.2
  mask: tuple[bool, ...] | None = None

  cluster_kinds = ("lognormal",)
  description = ("EDM's continuous lognormal sampler (config.objective.p_mean/p_std), whose "
                 "curriculum clusters are its equal-probability quantiles, the continuous "
                 "counterpart of uniform timestep intervals (each cluster carries mass 1/N)")
  units = "sigma"
  log_units = True

  @property
  def restricted(self) -> bool:
    return self.mask is not None and not all(self.mask)

  def __call__(self, key, shape, dtype=jnp.float32):
    if not self.restricted:
      from jaxdiff.diffusion import noise
      return noise.lognormal_sigma(key, shape, self.p_mean, self.p_std, dtype=dtype)
    from jaxdiff.curriculum import clusters
    return clusters.sample_sigma_in_mask(key, shape, self.mask, self.p_mean, self.p_std,
                                         dtype=dtype)

  def restrict(self, mask):
    return dataclasses.replace(self, mask=None if mask is None else tuple(mask))

  def quantiles(self, q):
    from scipy.special import ndtri
    return np.exp(self.p_mean + self.p_std * ndtri(np.asarray(q, np.float64)))

  def in_enabled_clusters(self, sigma):
    if not self.restricted:
      return jnp.ones(jnp.shape(sigma), bool)
    from jaxdiff.curriculum import clusters
    edges = clusters.cluster_edges(len(self.mask), "lognormal", self.p_mean, self.p_std)
    return jnp.asarray(self.mask)[clusters.cluster_index(sigma, edges)]

  def probe_levels(self, num_clusters, per_cluster):
    """sigma at the quantiles (i + (m + 0.5) / M) / N, computed in float32 exactly as
    `curriculum.analysis.make_probe_set` does (the study's results before the contract)."""
    flat = _lognormal_probe_levels(int(num_clusters), int(per_cluster), self.p_mean,
                                   self.p_std)
    return np.asarray(flat).reshape(int(num_clusters), int(per_cluster))

  def cluster_ranges(self, num_clusters):
    from jaxdiff.curriculum import clusters
    edges = np.asarray(clusters.cluster_edges(int(num_clusters), "lognormal", self.p_mean,
                                              self.p_std), np.float64)
    lo, hi = np.concatenate([[0.0], edges]), np.concatenate([edges, [np.inf]])
    return [(float(a), float(b)) for a, b in zip(lo, hi)]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _lognormal_probe_levels(num_clusters, per_cluster, p_mean, p_std):
  from jaxdiff.diffusion.noise import lognormal_quantile
  dtype = jnp.float32
  cluster = jnp.repeat(jnp.arange(num_clusters, dtype=jnp.int32), per_cluster)
  within = (jnp.tile(jnp.arange(per_cluster), num_clusters) + 0.5) / per_cluster
  quantile = (cluster.astype(dtype) + within.astype(dtype)) / num_clusters
  return lognormal_quantile(quantile, p_mean, p_std).astype(dtype)  # flat, as analysis's


# ------------------------------------------------------------------ the network

# apply_fn(params, x_in, c_noise, class_labels, augment_labels, train, dropout_key) -> F(x);
# apply_fn.log_variance(params, c_noise) -> [B] where the network has a learned loss
# uncertainty head (EDM2's), else apply_fn.log_variance is None.
ApplyFn = Callable[..., jax.Array]


def make_apply_fn(model, remat_whole: bool = False) -> ApplyFn:
  """Adapts a Linen module to the raw-network signature the objectives use.

  `remat_whole` checkpoints each call as a whole (`models.remat_whole_network`): its
  activations are recomputed in the backward pass, only the inputs are kept.
  """

  def apply_fn(params, x, c_noise, class_labels=None, augment_labels=None, train=False,
               dropout_key=None):
    def call(params, x, c_noise, class_labels, augment_labels, dropout_key):
      rngs = {"dropout": dropout_key} if (train and dropout_key is not None) else {}
      return model.apply({"params": params}, x, c_noise, class_labels, augment_labels,
                         train=train, rngs=rngs)

    if remat_whole:
      call = jax.checkpoint(call)
    return call(params, x, c_noise, class_labels, augment_labels, dropout_key)

  apply_fn.log_variance = None
  if callable(getattr(model, "log_variance", None)):
    def log_variance(params, c_noise):
      return model.apply({"params": params}, c_noise, method="log_variance")
    apply_fn.log_variance = log_variance
  return apply_fn


# ------------------------------------------------------------------ the contract

class Objective:
  """Base class of every method; see the module docstring for the contract."""

  name: str = ""  # set by `registry.register`

  # The device mesh the train step runs on (None when used without one).
  # Objectives whose math spans the batch axes (STF's reference sets) shard_map
  # over it.
  mesh = None

  # Extra data examples per step the pipeline must draw for this objective, over
  # all processes; they arrive as batch["reference"] (and batch["reference_label"]).
  reference_draws = 0
  # The `objective.formulation` values it trains with (objectives/formulations.py).
  formulations: tuple[str, ...] = ("edm",)
  # Whether it applies EDM's augmentation pipeline when `augment.p > 0` (docs/augment.md).
  augments = False
  # How they are drawn (`data.pipeline.REFERENCE_CLASSES`): "iid" from the whole dataset,
  # or "same_class": reference_draws / batch per minibatch row, from that row's class.
  reference_classes = "iid"

  # Static variants of the update, one compiled executable each (ACT: the plain
  # step and the lazy-R1 step). The trainer asks `variant_for_step` on the host,
  # from the step number only, so every host and a resumed run pick the same one.
  step_variants: tuple = (None,)

  # Whether the loss is the mean of per-example terms given the key, so that the
  # trainer may compute it over microbatches (`train.microbatches`); False for
  # objectives whose targets depend on the whole batch (STF's reference set).
  per_example_loss = True

  # The optional probing contract (module docstring): a method
  # `probe_loss(params, x0, noise, level, labels) -> [B]` where the objective has one.
  # x0 and noise [B, ...] are given, level [B] is a noise level in its sampler's units
  # (`NoiseSampler.probe_levels`), labels one-hot [B, C] or None; deterministic (no
  # dropout, no augmentation). None: the objective cannot be probed this way.
  probe_loss = None

  # Whether `sample` draws fresh noise from its key (then FID runs it per image, so
  # that every image is a function of its own seed).
  sampler_draws_noise = False

  # {section: {key: default}}: the config keys this class adds; a subclass adds its own
  # to its parents' (`config_sections`). A section may be shared by several methods.
  config_keys: dict[str, dict[str, Any]] = {}

  # ---------------------------------------------------------------- config

  @classmethod
  def config_sections(cls) -> dict[str, dict[str, Any]]:
    """{section: {key: default}} of every config key this method reads: its own and its
    parents' `config_keys` (merged into `base_config()`)."""
    merged: dict[str, dict[str, Any]] = {}
    for klass in reversed(cls.__mro__):
      for section, keys in vars(klass).get("config_keys", {}).items():
        merged.setdefault(section, {}).update(keys)
    return merged

  @classmethod
  def validate_config(cls, config: ml_collections.ConfigDict,
                      num_devices: int | None = None) -> None:
    """Raises `ConfigError` naming the key, the value and the fix."""

  @classmethod
  def noise_sampler(cls, config) -> NoiseSampler:
    """The training distribution of noise levels (the whole of it: no curriculum)."""
    return LognormalSampler(float(config.objective.p_mean), float(config.objective.p_std))

  @classmethod
  def pretrain_config(cls, config) -> ml_collections.ConfigDict | None:
    """A run to train first, whose weights start this one (see `init_from`); None: none."""
    return None

  @classmethod
  def from_config(cls, config, apply_fn: ApplyFn, example_shape, noise_sampler: NoiseSampler,
                  mesh=None) -> "Objective":
    raise NotImplementedError

  # ---------------------------------------------------------------- training

  def init_aux(self, params: PyTree) -> PyTree:
    return {}

  def loss(self, params: PyTree, aux: PyTree, batch: dict, key: jax.Array,
           step: jax.Array) -> tuple[jax.Array, Metrics]:
    """Returns (scalar loss to differentiate, metrics).

    Metrics may include `per_sample_loss` and `sigma` (both [B]); the trainer
    turns them into per-noise-level loss buckets.
    """
    raise NotImplementedError

  def variant_for_step(self, step: int):
    return None

  def after_update(self, aux: PyTree, params: PyTree, batch: dict, key: jax.Array,
                   step: jax.Array, variant=None) -> tuple[PyTree, Metrics]:
    """The objective's own update after the parameter update: (new aux, metrics).

    `params` are the freshly updated parameters; a teacher EMA or a second
    player (ACT's discriminator step) updates here.
    """
    return aux, {}

  # ---------------------------------------------------------------- sampling

  def sampling_params(self, params: PyTree, aux: PyTree) -> PyTree:
    """What `sample` gets from (the trainer's EMA or raw weights, the objective's state)."""
    return params

  def sample(self, params: PyTree, latents: jax.Array, labels: jax.Array | None,
             key: jax.Array, sample_config) -> jax.Array:
    """Images from standard normal `latents` [B, ...] and one-hot `labels` [B, C] (or None)."""
    raise NotImplementedError


def per_sample_sum(x: jax.Array) -> jax.Array:
  return jnp.sum(x.reshape(x.shape[0], -1), axis=1)


def one_hot_labels(batch: dict, num_classes: int, dtype=jnp.float32):
  if not num_classes or "label" not in batch:
    return None
  return jax.nn.one_hot(batch["label"], num_classes, dtype=dtype)


def expand_to(a: jax.Array, x: jax.Array) -> jax.Array:
  """A per-sample [B] array shaped to broadcast against x [B, ...], in x's dtype."""
  return a.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
