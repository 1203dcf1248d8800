"""The training loop, split into small named stages.

`Experiment` builds everything once from the config (mesh, data, model,
objective per curriculum stage, sharded state). `train()` restores or
initialises the state, then runs steps, logging, checkpoints and samples; a
rerun on the same workdir continues exactly where the last checkpoint left off,
because every schedule is a function of the checkpointed state and the batch of
a step is a function of (seed, step).
"""
from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxdiff import checkpoint as ckpt_lib
from jaxdiff import config as config_lib
from jaxdiff import models, objectives, parallel, visualize
from jaxdiff.curriculum import pacing
from jaxdiff.data import pipeline
from jaxdiff.evaluation import quality
from jaxdiff.objectives import base
from jaxdiff.train import optim, step as step_lib
from jaxdiff.train.metrics import MetricWriter, Progress

# Keys that may change between a run and its resumption (they do not change the math).
RESUMABLE_KEYS = ("train.num_steps", "train.log_every", "train.ckpt_every", "train.sample_every",
                  "train.eval_every", "train.keep_checkpoints", "sample.", "eval.")


class NonFiniteLossError(RuntimeError):
  pass


def log(msg: str) -> None:
  """The progress stream a person watches: process 0 only."""
  if jax.process_index() == 0:
    print(msg, flush=True)
  logging.info(msg)


class Experiment:
  """Mesh, data, model, objectives and sharded state of one config."""

  def __init__(self, config: ml_collections.ConfigDict, mesh=None):
    self.config = config
    self.mesh = mesh if mesh is not None else parallel.make_mesh(config.mesh)
    config_lib.validate(config, num_devices=self.mesh.size)
    if config.data.batch_size % jax.process_count():
      raise config_lib.ConfigError(
          f"config.data.batch_size={config.data.batch_size} is not divisible by the "
          f"{jax.process_count()} processes.")
    self.dataset, self.example_shape = pipeline.make_dataset(config.data)
    self.num_classes = int(config.data.num_classes)
    self.model = models.build_model(config.model, image_shape=self.example_shape,
                                    num_classes=self.num_classes)
    self.apply_fn = base.make_apply_fn(self.model)
    self.tx = optim.make_optimizer(config.optim)
    self._objectives: dict[Any, base.Objective] = {}
    self.objective = self.objective_for(None)

    init = step_lib.make_init_fn(self.model, self.tx, self.objective, self.example_shape,
                                 self.num_classes, int(config.model.augment_dim), config.seed,
                                 config.rng_impl)
    abstract = jax.eval_shape(init)
    self.state_sharding = parallel.state_shardings(abstract, self.mesh)
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
        self.state_sharding)
    self._init = jax.jit(init, out_shardings=self.state_sharding)
    self.num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))

    self.batcher = pipeline.StepBatcher(
        dataset=self.dataset, global_batch_size=config.data.batch_size, seed=config.seed,
        process_slice=parallel.process_batch_slice(config.data.batch_size),
        toy2d_distribution=(config.data.toy2d_distribution if config.data.name == "toy2d"
                            else None),
        random_flip=bool(config.data.random_flip))
    example = self.batcher(0)
    self.abstract_batch = {
        k: jax.ShapeDtypeStruct((config.data.batch_size,) + v.shape[1:], v.dtype,
                                sharding=parallel.batch_sharding(self.mesh, v.ndim))
        for k, v in example.items()}
    edges = step_lib.loss_bucket_edges(config.train.loss_buckets, config.objective.p_mean,
                                       config.objective.p_std) if config.train.loss_buckets else None
    self.compiler = step_lib.StepCompiler(
        lambda key: step_lib.make_train_step(self.objective_for(key), self.tx, config, edges),
        self.mesh, self.state_sharding, self.abstract_state, self.abstract_batch)

  def objective_for(self, stage_key) -> base.Objective:
    """The objective with the noise sampler of a curriculum stage (None: no curriculum)."""
    if stage_key not in self._objectives:
      c = self.config.objective
      sampler = base.LognormalSampler(c.p_mean, c.p_std, stage_key)
      self._objectives[stage_key] = objectives.make_objective(
          self.config, self.apply_fn, sampler, self.example_shape)
    return self._objectives[stage_key]

  def init_state(self):
    return self._init()

  def global_batch(self, step: int) -> dict:
    return parallel.to_global(self.batcher(step), self.mesh, self.config.data.batch_size)


# ----------------------------------------------------------------- curriculum glue

class Curriculum:
  """Host-side stage bookkeeping; the stage's mask is the static key of the step."""

  def __init__(self, curriculum_config):
    self.config = curriculum_config
    self.enabled = bool(curriculum_config.enabled)
    self.pacer = pacing.make_pacer(curriculum_config) if self.enabled else None

  @property
  def stage(self) -> int:
    return self.pacer.stage if self.enabled else 0

  def mask(self):
    if not self.enabled:
      return None
    return pacing.mask_for_stage(self.config, self.pacer.stage)

  def observe(self, step: int, loss: float) -> None:
    if self.enabled:
      self.pacer.observe(step, loss)

  @property
  def needs_loss(self) -> bool:
    return self.enabled and self.config.pacing == "patience"

  def state_dict(self) -> dict:
    return self.pacer.state_dict() if self.enabled else {}

  def load_state_dict(self, d: dict) -> None:
    if self.enabled and d:
      self.pacer.load_state_dict(d)


# ----------------------------------------------------------------- workdir config

def check_workdir_config(workdir: str, config, allow_change: bool = False) -> None:
  """Writes config.json, or compares with the one a previous run wrote there."""
  path = os.path.join(workdir, "config.json")
  current = json.loads(config_lib.to_json(config))
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    diffs = config_lib.config_diff(saved, current)
    blocking = [d for d in diffs if not d.startswith(RESUMABLE_KEYS)]
    if blocking and not allow_change:
      raise config_lib.ConfigError(
          f"The workdir {workdir} holds a run with a different config; these keys differ:\n  "
          + "\n  ".join(blocking)
          + "\nUse a new --workdir, restore the original values, or pass "
            "--allow_config_change to resume with the new values anyway.")
    for d in diffs:
      log(f"config change on resume: {d}")
    if not diffs:
      return
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
      f.write(config_lib.to_json(config))


# ----------------------------------------------------------------- preemption

class PreemptionWatch:
  """SIGTERM (and JAX's multi-host preemption notice) -> save at the next step boundary."""

  def __init__(self, checkpointer: ckpt_lib.Checkpointer):
    self._ckpt = checkpointer
    self.requested = False
    self._previous = None
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # not the main thread (e.g. some test runners)
      pass

  def _handler(self, signum, frame):
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      return self._ckpt.reached_preemption(step)
    return self.requested

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


# ----------------------------------------------------------------- train

def restore_or_init(exp: Experiment, checkpointer: ckpt_lib.Checkpointer, curriculum: Curriculum,
                    init_from: str | None = None):
  restored = checkpointer.restore_latest(exp.abstract_state)
  if restored is not None:
    state, host, step = restored
    curriculum.load_state_dict(host.get("curriculum", {}))
    log(f"resumed from step {step} in {checkpointer.directory}")
    return state
  state = exp.init_state()
  return state


def host_state(curriculum: Curriculum) -> dict:
  return {"curriculum": curriculum.state_dict()}


def train(config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False,
          mesh=None) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the final summary."""
  exp = Experiment(config, mesh=mesh)
  check_workdir_config(workdir, config, allow_config_change)
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                       keep=config.train.keep_checkpoints)
  curriculum = Curriculum(config.curriculum)
  state = restore_or_init(exp, checkpointer, curriculum)
  start = int(state.step)
  total = int(config.train.num_steps)
  log(f"jaxdiff: {jax.process_count()} process(es), {jax.device_count()} device(s), mesh "
      f"{dict(exp.mesh.shape)}, global batch {config.data.batch_size} "
      f"({config.data.batch_size // exp.mesh.size} per device), {exp.num_params:,} parameters, "
      f"objective {config.objective.name}, steps {start}->{total}")

  writer = MetricWriter(workdir)
  progress = Progress(total, start)
  watch = PreemptionWatch(checkpointer)
  metrics = None
  step = start
  try:
    while step < total:
      stage_key = curriculum.mask()
      step_fn = exp.compiler(stage_key)
      state, metrics = step_fn(state, exp.global_batch(step))
      step += 1
      if curriculum.enabled:
        # The patience rule needs the (globally reduced) loss every step; the
        # fixed rule only the step, so it does not sync with the device.
        curriculum.observe(step - 1, float(metrics["loss"]) if curriculum.needs_loss else None)
      if int(metrics["nonfinite_streak"]) > config.optim.max_consecutive_nonfinite:
        raise NonFiniteLossError(
            f"{int(metrics['nonfinite_streak'])} consecutive steps had non-finite gradients (up "
            f"to step {step}); the run stops. The last good checkpoint in {workdir} is intact; "
            "lower config.optim.lr, enable config.optim.grad_clip or check the data.")
      if step % config.train.log_every == 0 or step == total:
        scalars = jax.device_get(metrics)
        scalars = {k: v for k, v in scalars.items()}
        scalars["steps_per_sec"] = progress.rate(step)
        if curriculum.enabled:
          scalars["curriculum/stage"] = curriculum.stage
        writer.write(step, scalars)
        stage_txt = f"  stage {curriculum.stage}" if curriculum.enabled else ""
        log(progress.line(step, float(scalars["loss"]), stage_txt))
      elif curriculum.enabled:
        writer.write(step, {"curriculum/stage": curriculum.stage})
      if step % config.train.ckpt_every == 0 or step == total:
        checkpointer.save(step, state, host_state(curriculum))
      if watch.should_stop(step):
        checkpointer.save(step, state, host_state(curriculum), force=True)
        checkpointer.wait()
        log(f"preemption: saved step {step} to {checkpointer.directory}; exiting cleanly. "
            "Rerun the same command to resume.")
        return {"preempted": True, "step": step}
      if config.train.sample_every and step % config.train.sample_every == 0 and step < total:
        write_samples(exp, state, workdir, step, writer)
    checkpointer.wait()
    summary = {"step": step, "num_params": exp.num_params,
               "compilations": [(str(k), round(s, 2)) for k, s in exp.compiler.compile_log]}
    if metrics is not None:
      summary["final_loss"] = float(metrics["loss"])
    summary.update(write_samples(exp, state, workdir, step, writer, final=True))
    if jax.process_index() == 0:
      with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
  finally:
    watch.restore()
    writer.close()
    checkpointer.close()


# ----------------------------------------------------------------- sampling

def make_sample_fn(exp: Experiment, objective: base.Objective | None = None):
  """(params, latents, key) -> samples, jitted and sharded over the batch axes."""
  from jaxdiff import sampling
  s = exp.config.sample
  objective = objective or exp.objective

  def sample(params, latents, key):
    if objective.sampler_kind == "consistency":
      return sampling.consistency_sampler(objective.denoiser(params), latents,
                                          jnp.asarray(s.consistency_sigmas, latents.dtype), key=key)
    return sampling.edm_sampler(objective.denoiser(params), latents, num_steps=s.num_steps,
                                sigma_min=s.sigma_min, sigma_max=s.sigma_max, rho=s.rho)

  shard = parallel.batch_sharding(exp.mesh, 1 + len(exp.example_shape))
  return jax.jit(sample, out_shardings=shard), shard


def generate(exp: Experiment, params, num_samples: int, seed: int = 0) -> np.ndarray:
  """num_samples samples as a host numpy array; latents are a function of `seed` only."""
  sample_fn, shard = make_sample_fn(exp)
  n_dev = exp.mesh.size
  padded = -(-num_samples // n_dev) * n_dev
  key = jax.random.PRNGKey(seed)
  latents = jax.random.normal(jax.random.fold_in(key, 0), (padded,) + tuple(exp.example_shape))
  latents = jax.device_put(latents, shard)
  out = sample_fn(params, latents, jax.random.fold_in(key, 1))
  out = np.asarray(jax.device_get(jax.experimental.multihost_utils.process_allgather(out, tiled=True))
                   if jax.process_count() > 1 else jax.device_get(out))
  return out[:num_samples]


def write_samples(exp: Experiment, state, workdir: str, step: int, writer: MetricWriter,
                  final: bool = False, use_ema: bool = True) -> dict:
  params = state.ema_params if use_ema else state.params
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
    log(f"quality: {name} = {value:.4f} ({n} samples, EMA weights) at step {step}")
  return out


def save_sample_outputs(config, samples: np.ndarray, directory: str, stem: str,
                        writer: MetricWriter | None = None, step: int = 0) -> dict:
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


def sample_from_workdir(config, workdir: str, num_samples: int, use_ema: bool = True,
                        seed: int = 0, out_dir: str | None = None) -> dict:
  """The `--mode=sample` command: N samples from the latest checkpoint."""
  exp = Experiment(config)
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                       keep=config.train.keep_checkpoints)
  restored = checkpointer.restore_latest(exp.abstract_state)
  checkpointer.close()
  if restored is None:
    raise FileNotFoundError(
        f"No checkpoint in {workdir}/checkpoints; train first with "
        f"`python -m jaxdiff.main --config=... --workdir={workdir}`.")
  state, _, step = restored
  params = state.ema_params if use_ema else state.params
  samples = generate(exp, params, num_samples, seed=seed)
  weights = "ema" if use_ema else "raw"
  out = {"step": step, "weights": weights}
  if jax.process_index() == 0:
    out.update(save_sample_outputs(config, samples, out_dir or os.path.join(workdir, "samples"),
                                   f"sample_step{step}_{weights}_seed{seed}_n{num_samples}"))
  log(f"wrote {num_samples} samples ({weights} weights, step {step}) to {out.get('samples_png')}")
  return out
