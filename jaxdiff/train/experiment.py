"""Everything one config builds once: mesh, data, model, objective per stage, sharded state.

The state is born sharded (`jax.jit(init, out_shardings=...)`), the batch of a
step is a function of (seed, step), and the train step of each static key
(curriculum stage x update variant) is compiled ahead of time by a
`StepCompiler`. The trainer (`loop.py`), the command modes and the benchmarks
all start from an `Experiment`.
"""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from jaxdiff import config as config_lib
from jaxdiff import models, objectives, optim, parallel
from jaxdiff.curriculum import settings as curriculum_settings
from jaxdiff.curriculum.runtime import Curriculum
from jaxdiff.data import latents, pipeline
from jaxdiff.errors import ConfigError
from jaxdiff.objectives import base
from jaxdiff.train import compile as compile_lib
from jaxdiff.train import step as step_lib


def check_batch_per_process(batch_size: int) -> None:
  n = jax.process_count()
  if batch_size % n:
    raise ConfigError(
        f"config.data.batch_size={batch_size} is not divisible by the {n} processes; use a "
        f"multiple of {n}, e.g. --config.data.batch_size={max(n, batch_size // n * n)}.")


class Experiment:
  """Mesh, data, model, objectives and sharded state of one config."""

  def __init__(self, config: ml_collections.ConfigDict, mesh=None):
    self.config = config
    self.mesh = mesh if mesh is not None else parallel.make_mesh(config.mesh)
    config_lib.validate(config, num_devices=self.mesh.size)
    self.method = objectives.get(config.objective.name)
    self.noise_sampler = self.method.noise_sampler(config)
    Curriculum.check_config(config, self.noise_sampler)
    check_batch_per_process(config.data.batch_size)
    self.dataset, self.example_shape = pipeline.make_dataset(config.data)
    # Latent data: the autoencoder that turns samples into images (None: pixels already).
    self.decoder = latents.output_decoder(config.data, self.dataset)
    self.num_classes = int(config.data.num_classes)
    self.model = models.build_model(config.model, image_shape=self.example_shape,
                                    num_classes=self.num_classes)
    self.apply_fn = base.make_apply_fn(self.model, models.remat_whole_network(config.model))
    self.tx = optim.make_optimizer(config.optim)
    self._objectives: dict[Any, base.Objective] = {}
    self.objective = self.objective_for(None)
    self._build_state()
    self._build_batches()
    edges = (step_lib.loss_bucket_edges(config.train.loss_buckets, self.noise_sampler)
             if config.train.loss_buckets else None)

    def build(key):
      stage, variant = compile_lib.split_key(key)
      return step_lib.make_train_step(self.objective_for(stage), self.tx, config, edges,
                                      variant=variant, monitored=self.monitored_sampler(stage))
    self.compiler = compile_lib.StepCompiler(build, self.mesh, self.state_sharding,
                                             self.abstract_state, self.abstract_batch)

  def _build_state(self) -> None:
    c = self.config
    init = step_lib.make_init_fn(self.model, self.tx, self.objective, self.example_shape,
                                 self.num_classes, int(c.model.augment_dim), c.seed, c.rng_impl)
    abstract = jax.eval_shape(init)
    self.state_sharding = parallel.state_shardings(abstract, self.mesh)
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
        self.state_sharding)
    self._init = jax.jit(init, out_shardings=self.state_sharding)
    self.num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))

  def _build_batches(self) -> None:
    c = self.config
    self.batcher = pipeline.StepBatcher(
        dataset=self.dataset, global_batch_size=c.data.batch_size, seed=c.seed,
        process_slice=parallel.process_batch_slice(c.data.batch_size, self.mesh),
        toy2d_distribution=c.data.toy2d_distribution if c.data.name == "toy2d" else None,
        random_flip=bool(c.data.random_flip),
        num_reference=self.objective.reference_draws,
        reference_classes=self.objective.reference_classes)
    example = self.batcher(0)
    # Leading sizes differ per key: the minibatch vs an objective's reference draws.
    self.global_sizes = self.batcher.global_sizes()
    self.abstract_batch = {
        k: jax.ShapeDtypeStruct((self.global_sizes[k],) + v.shape[1:], v.dtype,
                                sharding=parallel.batch_sharding(self.mesh, v.ndim))
        for k, v in example.items()}

  def step_key(self, stage_key, step: int):
    """The compiled step to run at `step` in a stage: the stage, and the objective's variant."""
    return compile_lib.step_key(stage_key, self.objective.variant_for_step(step))

  def all_step_keys(self, stage_keys) -> list:
    """Every compile key of `stage_keys`: each stage times each update variant."""
    return [compile_lib.step_key(k, v) for k in stage_keys for v in self.objective.step_variants]

  def monitored_sampler(self, stage_key):
    """The noise clusters the curriculum's patience rule watches in a stage (None: all)."""
    if not self.config.curriculum.enabled:
      return None
    mask = curriculum_settings.monitored_mask(self.config.curriculum, stage_key)
    return None if mask is None else self.noise_sampler.restrict(mask)

  def objective_for(self, stage_key) -> base.Objective:
    """The objective with the noise sampler of a curriculum stage (None: no curriculum)."""
    if stage_key not in self._objectives:
      self._objectives[stage_key] = objectives.build(
          self.config, self.apply_fn, self.example_shape, mesh=self.mesh,
          noise_sampler=self.noise_sampler.restrict(stage_key))
    return self._objectives[stage_key]

  def init_state(self):
    return self._init()

  def global_batch(self, step: int) -> dict:
    return {k: parallel.to_global({k: v}, self.mesh, self.global_sizes[k])[k]
            for k, v in self.batcher(step).items()}

  def advance(self, state, start: int, stop: int):
    """Trains steps start .. stop - 1 with the whole-distribution step (no curriculum, no
    logging): what a study or a benchmark needs of the trainer."""
    step_fn = self.compiler(None)
    for step in range(start, stop):
      state, _ = step_fn(state, self.global_batch(step))
    return state

  def preflight_line(self) -> str:
    """Processes, devices, mesh, batch split and model size: the set-up at a glance."""
    c = self.config
    b = c.data.batch_size
    return (f"jaxdiff: {jax.process_count()} process(es), {jax.device_count()} device(s) "
            f"({jax.local_device_count()} per process), mesh {dict(self.mesh.shape)}, global "
            f"batch {b} ({b // jax.process_count()} per process, {b // self.mesh.size} per "
            f"device), {self.num_params:,} parameters, objective {c.objective.name}")
