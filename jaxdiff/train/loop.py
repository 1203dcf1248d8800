"""The training loop, split into small named stages.

`Experiment` builds everything once from the config (mesh, data, model,
objective per curriculum stage, sharded state). `train()` restores or
initialises the state, then runs steps, logging, checkpoints and samples; a
rerun on the same workdir continues exactly where the last checkpoint left off,
because every schedule is a function of the checkpointed state and the batch of
a step is a function of (seed, step).
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import threading
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
# The mesh is one of them: a checkpoint restores onto any mesh (same math up to
# float reduction order), e.g. after a preempted job comes back on fewer hosts.
RESUMABLE_KEYS = ("train.num_steps", "train.log_every", "train.ckpt_every", "train.sample_every",
                  "train.eval_every", "train.keep_checkpoints", "sample.", "eval.", "mesh.",
                  "data.prefetch", "curriculum.precompile", "curriculum.study.")


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
    Curriculum.check_config(config)
    if config.data.batch_size % jax.process_count():
      n = jax.process_count()
      raise config_lib.ConfigError(
          f"config.data.batch_size={config.data.batch_size} is not divisible by the {n} "
          f"processes; use a multiple of {n}, e.g. --config.data.batch_size="
          f"{max(n, config.data.batch_size // n * n)}.")
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
        process_slice=parallel.process_batch_slice(config.data.batch_size, self.mesh),
        toy2d_distribution=(config.data.toy2d_distribution if config.data.name == "toy2d"
                            else None),
        random_flip=bool(config.data.random_flip),
        num_reference=self.objective.reference_draws)
    example = self.batcher(0)
    # Leading sizes differ per key: the minibatch vs an objective's reference draws.
    self.global_sizes = self.batcher.global_sizes()
    self.abstract_batch = {
        k: jax.ShapeDtypeStruct((self.global_sizes[k],) + v.shape[1:], v.dtype,
                                sharding=parallel.batch_sharding(self.mesh, v.ndim))
        for k, v in example.items()}
    edges = step_lib.loss_bucket_edges(config.train.loss_buckets, config.objective.p_mean,
                                       config.objective.p_std) if config.train.loss_buckets else None
    def build(key):
      stage, variant = step_lib.split_key(key)
      return step_lib.make_train_step(self.objective_for(stage), self.tx, config, edges,
                                      variant=variant)
    self.compiler = step_lib.StepCompiler(build, self.mesh, self.state_sharding,
                                          self.abstract_state, self.abstract_batch)

  def step_key(self, stage_key, step: int):
    """The compiled step to run at `step` in a stage: the stage, and the objective's variant."""
    return step_lib.step_key(stage_key, self.objective.variant_for_step(step))

  def all_step_keys(self, stage_keys) -> list:
    """Every compile key of `stage_keys`: each stage times each update variant."""
    return [step_lib.step_key(k, v) for k in stage_keys for v in self.objective.step_variants]

  def objective_for(self, stage_key) -> base.Objective:
    """The objective with the noise sampler of a curriculum stage (None: no curriculum)."""
    if stage_key not in self._objectives:
      c = self.config.objective
      sampler = base.LognormalSampler(c.p_mean, c.p_std, stage_key)
      self._objectives[stage_key] = objectives.make_objective(
          self.config, self.apply_fn, sampler, self.example_shape, mesh=self.mesh)
    return self._objectives[stage_key]

  def init_state(self):
    return self._init()

  def global_batch(self, step: int) -> dict:
    return {k: parallel.to_global({k: v}, self.mesh, self.global_sizes[k])[k]
            for k, v in self.batcher(step).items()}


# ----------------------------------------------------------------- curriculum glue

class Curriculum:
  """Host-side stage bookkeeping; the stage's mask is the static key of the step.

  Pacing decisions are identical on every host without any extra
  communication: the patience rule observes the jitted step's `loss`, which
  is the mean over the *global* batch (the batch is one sharded global array
  and the metrics come out replicated), so every process reads the same float
  and makes the same decision; the fixed rule is a function of the step only.
  The pacer's state is saved in the checkpoint's host JSON, so a resumed run
  continues in the same stage with the same patience counters.
  """

  def __init__(self, curriculum_config):
    self.config = curriculum_config
    self.enabled = bool(curriculum_config.enabled)
    self.pacer = pacing.make_pacer(curriculum_config) if self.enabled else None

  @staticmethod
  def check_config(config) -> None:
    """Refuses curriculum settings the training loop cannot honour.

    Every objective receives its noise levels from a `LognormalSampler`
    (EDM's continuous ln sigma ~ N(p_mean, p_std^2)), and the clusters are its
    equal-probability quantiles (CT/iCT's grid pairs are masked by the same
    quantile edges). `kind='uniform'` cuts *integer DDPM timesteps* into equal
    intervals; no objective here has such timesteps, so rather than guess a
    meaning (uniform in sigma would be badly unbalanced, spec 6.7) it is
    refused with the fix. Disabled, the kind is ignored.
    """
    cur = config.curriculum
    if cur.enabled and cur.kind != "lognormal":
      raise config_lib.ConfigError(
          f"config.curriculum.kind={cur.kind!r} splits the integer timesteps of a discrete "
          "(DDPM-style) schedule into equal intervals, but jaxdiff's objectives (here "
          f"{config.objective.name!r}) take their noise levels from EDM's continuous lognormal "
          "sampler (config.objective.p_mean/p_std), whose curriculum clusters are its "
          "equal-probability quantiles. Use --config.curriculum.kind=lognormal, the continuous "
          "counterpart of uniform timestep intervals (each cluster carries mass 1/N).")

  @property
  def stage(self) -> int:
    return self.pacer.stage if self.enabled else 0

  @property
  def num_stages(self) -> int:
    return int(self.config.num_clusters) if self.enabled else 0

  def mask(self, stage: int | None = None):
    """The static step key of `stage` (default: the current one); None when disabled."""
    if not self.enabled:
      return None
    return pacing.mask_for_stage(self.config, self.pacer.stage if stage is None else stage)

  def keys_to_precompile(self) -> list:
    """Step keys of later stages to compile ahead of time (`curriculum.precompile`).

    The next stage is always known (stages only move forward one at a time),
    for patience pacing too; only *when* it starts is not.
    """
    if not self.enabled or self.config.precompile == "none":
      return []
    last = self.num_stages if self.config.precompile == "all" else self.stage + 1
    return [self.mask(s) for s in range(self.stage + 1, min(last, self.num_stages) + 1)]

  def observe(self, step: int, loss: float | None) -> None:
    if self.enabled:
      self.pacer.observe(step, loss)

  @property
  def needs_loss(self) -> bool:
    return self.enabled and self.config.pacing == "patience"

  def state_dict(self) -> dict:
    return self.pacer.state_dict() if self.enabled else {}

  def load_state_dict(self, d: dict) -> None:
    if not self.enabled:
      return
    if not d:
      log("warning: the checkpoint holds no curriculum state (it was trained without the "
          "curriculum); the curriculum starts from its first stage now.")
      return
    try:
      self.pacer.load_state_dict(d)
    except ValueError as e:
      raise config_lib.ConfigError(
          f"cannot resume the curriculum from the checkpoint: {e}. Use a new --workdir or "
          "restore the curriculum keys the run was started with.") from e


class StagePrecompiler:
  """Compiles the train steps of coming curriculum stages in a background thread.

  Wraps the `StepCompiler` so that each key still compiles exactly once: a key
  submitted ahead of time is only ever compiled by the background thread, and
  the loop waits for that result if it needs the stage before it is ready.
  Compilation overlaps training (XLA releases the GIL while compiling).
  """

  def __init__(self, compiler: step_lib.StepCompiler):
    self._compiler = compiler
    self._lock = threading.Lock()
    self._pending: dict[Any, concurrent.futures.Future] = {}
    self._executor: concurrent.futures.ThreadPoolExecutor | None = None

  def prefetch(self, keys) -> None:
    """Queues `keys` for compilation, in order, one at a time."""
    with self._lock:
      for key in keys:
        if key in self._pending:
          continue
        if self._executor is None:
          self._executor = concurrent.futures.ThreadPoolExecutor(
              1, thread_name_prefix="jaxdiff-precompile")
        self._pending[key] = self._executor.submit(self._compiler, key)

  def __call__(self, key):
    with self._lock:
      future = self._pending.get(key)
    if future is not None:
      return future.result()  # re-raises a failed background compilation here
    return self._compiler(key)

  def drop_except(self, keep) -> None:
    """Frees compiled steps (and finished background results) of keys not in `keep`."""
    keep = set(keep)
    with self._lock:
      for key in [k for k, f in self._pending.items() if k not in keep and f.done()]:
        del self._pending[key]
    self._compiler.drop_except(keep | set(self._pending))

  def close(self) -> None:
    """Drops queued compilations; waits for one already running."""
    if self._executor is not None:
      self._executor.shutdown(wait=True, cancel_futures=True)
      self._executor = None


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
  # Every process has read the old file before process 0 replaces it, and the
  # replacement is atomic (a killed write never leaves half a config.json).
  parallel.sync_processes("config_json_read")
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
      f.write(config_lib.to_json(config))
    os.replace(path + ".tmp", path)
  parallel.sync_processes("config_json_written")


# ----------------------------------------------------------------- preemption

class PreemptionWatch:
  """SIGTERM (and JAX's preemption notice) -> save at the next step boundary.

  Under jax.distributed (multi-host, TPU VMs) JAX's preemption sync manager
  owns SIGTERM: a notice on any host makes every host agree on one step to save
  at (`reached_preemption`), so no Python handler is installed there, since it would
  replace JAX's. A plain single process catches SIGTERM itself.
  """

  def __init__(self, checkpointer: ckpt_lib.Checkpointer):
    self._ckpt = checkpointer
    self.requested = False
    self._previous = None
    self._use_jax = jax.distributed.is_initialized()
    if not self._use_jax:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handler)
      except ValueError:  # not the main thread (e.g. some test runners)
        pass

  def _handler(self, signum, frame):
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if self._use_jax:
      # Collective bookkeeping: every process calls this at every step.
      return self._ckpt.reached_preemption(step)
    return self.requested

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


# ----------------------------------------------------------------- train

def preflight_line(exp: Experiment) -> str:
  """Processes, devices, mesh, batch split and model size: the set-up at a glance."""
  c = exp.config
  b = c.data.batch_size
  return (f"jaxdiff: {jax.process_count()} process(es), {jax.device_count()} device(s) "
          f"({jax.local_device_count()} per process), mesh {dict(exp.mesh.shape)}, global batch "
          f"{b} ({b // jax.process_count()} per process, {b // exp.mesh.size} per device), "
          f"{exp.num_params:,} parameters, objective {c.objective.name}")


def restore_or_init(exp: Experiment, checkpointer: ckpt_lib.Checkpointer, curriculum: Curriculum,
                    init_from: str | None = None):
  restored = checkpointer.restore_latest(exp.abstract_state)
  if restored is not None:
    state, host, step = restored
    curriculum.load_state_dict(host.get("curriculum", {}))
    log(f"resumed from step {step} in {checkpointer.directory}")
    return state
  state = exp.init_state()
  if init_from:
    state = load_init_from(exp, state, init_from)
  return state


# Config keys that fix the shape of the weights (init_from must match them).
ARCHITECTURE_KEYS = ("data.image_size", "data.channels", "data.num_classes", "model.name",
                     "model.model_channels", "model.channel_mult", "model.channel_mult_emb",
                     "model.num_blocks", "model.attn_resolutions", "model.augment_dim",
                     "model.hidden_dim", "model.num_layers")


def _latest_readable_steps(directory: str) -> list[int]:
  """Finished checkpoint steps in an orbax directory, newest first (temporary dirs skipped)."""
  if not os.path.isdir(directory):
    return []
  return sorted((int(d) for d in os.listdir(directory)
                 if d.isdigit() and os.path.isdir(os.path.join(directory, d, "state"))),
                reverse=True)


def load_init_from(exp: Experiment, state, init_from: str):
  """A fresh state whose params and ema_params are the EMA weights of `init_from`'s run.

  As ECT does with an EDM checkpoint (spec §2.3: the EMA weights are copied into
  both the network and its EMA). Only the `ema_params` subtree of the newest
  readable checkpoint of `<init_from>/checkpoints` is read, so the source run
  may use another objective or optimizer; its architecture must match this
  config's. The objective's aux (e.g. CT's teacher) is re-derived from them.
  """
  import orbax.checkpoint as ocp
  from etils import epath
  ckpt_dir = os.path.join(init_from, "checkpoints")
  steps = _latest_readable_steps(ckpt_dir)
  if not steps:
    raise FileNotFoundError(
        f"config.init_from={init_from!r} has no checkpoint in {ckpt_dir}; point it at the "
        "workdir of a finished run (e.g. an EDM run of configs/digits_edm.py), or leave it "
        "empty (recipes with consistency.pretrain_steps > 0 then train one first).")
  source_config = os.path.join(init_from, "config.json")
  if os.path.exists(source_config):
    with open(source_config) as f:
      saved = json.load(f)
    current = json.loads(config_lib.to_json(exp.config))
    diffs = [d for d in config_lib.config_diff(saved, current)
             if d.startswith(ARCHITECTURE_KEYS)]
    if diffs:
      raise config_lib.ConfigError(
          f"config.init_from={init_from!r} holds a run with another architecture; these keys "
          "differ:\n  " + "\n  ".join(diffs) + "\nSet them to the source run's values.")
  target = exp.abstract_state.ema_params
  errors = []
  for step in steps:
    path = epath.Path(ckpt_dir) / str(step) / "state"
    try:
      meta = dict(ocp.StandardCheckpointer().metadata(path).item_metadata)["ema_params"]
    except Exception as e:  # noqa: BLE001 - unreadable: try the previous one
      errors.append(f"step {step}: {type(e).__name__}: {str(e)[:200]}")
      continue
    want = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in
            jax.tree_util.tree_flatten_with_path(target)[0]}
    have = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in
            jax.tree_util.tree_flatten_with_path(meta)[0]}
    if want != have:
      diff = sorted(f"{k}: {have.get(k, 'absent')} (init_from) vs {want.get(k, 'absent')} (now)"
                    for k in set(want) | set(have) if want.get(k) != have.get(k))
      raise config_lib.ConfigError(
          f"config.init_from={init_from!r}: its weights do not fit this model ({len(diff)} "
          "parameters differ):\n  " + "\n  ".join(diff[:10]) +
          "\nUse the same model and data settings as the source run.")
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    try:
      restored = ocp.PyTreeCheckpointer().restore(
          path, args=ocp.args.PyTreeRestore(item={"ema_params": target},
                                            restore_args={"ema_params": restore_args},
                                            partial_restore=True))
    except Exception as e:  # noqa: BLE001
      errors.append(f"step {step}: {type(e).__name__}: {str(e)[:200]}")
      continue
    weights = restored["ema_params"]
    copy = jax.jit(lambda p: jax.tree.map(jnp.copy, p),
                   out_shardings=exp.state_sharding.params)
    aux = jax.jit(exp.objective.init_aux, out_shardings=exp.state_sharding.aux)(weights)
    log(f"initialised params and EMA from the EMA weights of {init_from} (step {step})")
    return state.replace(params=copy(weights), ema_params=copy(weights), aux=aux)
  raise FileNotFoundError(f"config.init_from={init_from!r}: no checkpoint in {ckpt_dir} could "
                          "be read:\n  " + "\n  ".join(errors))


def resolve_init_from(config, workdir: str, mesh=None) -> str:
  """config.init_from, or the EDM run a recipe pre-trains itself (consistency.pretrain_steps)."""
  if config.init_from or not config.consistency.get("pretrain_steps", 0):
    if not config.init_from and config.objective.name in ("ect", "sct"):
      log("WARNING: ECT/SCT tune a pretrained diffusion model, but config.init_from is empty and "
          "config.consistency.pretrain_steps = 0: starting from random weights.")
    return config.init_from
  from jaxdiff.objectives.consistency import pretrain_config
  pre_dir = os.path.join(workdir, "pretrain")
  pre = pretrain_config(config)
  done = os.path.join(pre_dir, "summary.json")
  if os.path.exists(done):
    with open(done) as f:
      if json.load(f).get("step", 0) >= pre.train.num_steps:
        return pre_dir
  log(f"init_from is empty: pre-training EDM for {pre.train.num_steps} steps in {pre_dir}")
  train(pre, pre_dir, mesh=mesh)
  return pre_dir


def host_state(curriculum: Curriculum) -> dict:
  return {"curriculum": curriculum.state_dict()}


def train(config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False,
          mesh=None) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the final summary."""
  exp = Experiment(config, mesh=mesh)
  log(preflight_line(exp))  # before any restore or compilation
  check_workdir_config(workdir, config, allow_config_change)
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                       keep=config.train.keep_checkpoints)
  curriculum = Curriculum(config.curriculum)
  init_from = (resolve_init_from(config, workdir, mesh) if checkpointer.latest_step() is None
               else None)
  state = restore_or_init(exp, checkpointer, curriculum, init_from=init_from)
  start = int(state.step)
  total = int(config.train.num_steps)
  log(f"steps {start}->{total}")

  writer = MetricWriter(workdir)
  from jaxdiff.evaluation import run_eval  # FID at train.eval_every when Inception weights are set
  fid_hook = run_eval.InLoopFID(exp, workdir)
  # Batches of the next steps are read and put on the devices in a background thread.
  batches = (pipeline.Prefetcher(exp.global_batch, start, config.data.prefetch)
             if config.data.prefetch else None)
  progress = Progress(total, start)
  watch = PreemptionWatch(checkpointer)
  metrics = None
  step = start
  # One compiled step per curriculum stage; later stages compile in the background.
  stage_steps = StagePrecompiler(exp.compiler)
  try:
    # The current stage's other update variants (ACT's R1 step) compile in the
    # background too, then the coming stages.
    stage_steps.prefetch([k for k in exp.all_step_keys([curriculum.mask()])
                          if k != exp.step_key(curriculum.mask(), step)])
    stage_steps.prefetch(exp.all_step_keys(curriculum.keys_to_precompile()))
    while step < total:
      trained_stage = curriculum.stage  # the stage this step trains on (logged with it)
      step_fn = stage_steps(exp.step_key(curriculum.mask(), step))
      state, metrics = step_fn(state, batches.get(step) if batches else exp.global_batch(step))
      step += 1
      if curriculum.enabled:
        # The patience rule needs the loss every step (a global-batch mean, so
        # every host decides alike); the fixed rule only the step, so it does
        # not sync with the device.
        curriculum.observe(step - 1, float(metrics["loss"]) if curriculum.needs_loss else None)
        if curriculum.stage != trained_stage:
          log(f"curriculum: stage {trained_stage} -> {curriculum.stage} after step {step}")
          stage_steps.prefetch(exp.all_step_keys([curriculum.mask()]))
          stage_steps.prefetch(exp.all_step_keys(curriculum.keys_to_precompile()))
          # A 20-stage run would otherwise hold 20 executables in host memory.
          stage_steps.drop_except(exp.all_step_keys([curriculum.mask()] +
                                                    curriculum.keys_to_precompile()))
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
          scalars["curriculum/stage"] = trained_stage
        writer.write(step, scalars)
        stage_txt = f"  stage {trained_stage}" if curriculum.enabled else ""
        log(progress.line(step, float(scalars["loss"]), stage_txt))
      elif curriculum.enabled:
        writer.write(step, {"curriculum/stage": trained_stage})
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
      if fid_hook.due(step, total):
        fid_hook(state, step, writer)
    checkpointer.wait()
    stage_steps.close()  # a background compilation still running joins the log first
    summary = {"step": step, "num_params": exp.num_params,
               "compilations": [(str(k), round(s, 2)) for k, s in exp.compiler.compile_log]}
    if metrics is not None:
      summary["final_loss"] = float(metrics["loss"])
    summary.update(write_samples(exp, state, workdir, step, writer, final=True))
    if fid_hook.latest is not None:
      summary["fid"] = fid_hook.latest  # {"last": ..., "best": min over evaluations}
    if batches is not None:
      summary["input_wait_seconds"] = round(batches.wait_seconds, 3)
    if jax.process_index() == 0:
      with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
  finally:
    stage_steps.close()
    watch.restore()
    if batches is not None:
      batches.close()
    writer.close()
    checkpointer.close()


# ----------------------------------------------------------------- compile only

def stage_keys(config) -> list:
  """The static step keys a run can use: every curriculum stage's mask, or None."""
  if not config.curriculum.enabled:
    return [None]
  keys = []
  for stage in range(1, int(config.curriculum.num_clusters) + 1):
    key = pacing.mask_for_stage(config.curriculum, stage)
    if key not in keys:
      keys.append(key)
  return keys


def compile_report(compiled) -> dict:
  """Per-device memory (bytes) and cost estimates of one compiled executable."""
  out: dict[str, Any] = {}
  mem = compiled.memory_analysis()
  if mem is not None:
    for field in ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                  "temp_size_in_bytes", "generated_code_size_in_bytes"):
      out[field] = int(getattr(mem, field, 0) or 0)
    # Donated state aliases its output, so it counts once.
    out["peak_bytes_estimate"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                                  - out["alias_size_in_bytes"] + out["temp_size_in_bytes"])
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else None
  if cost:
    out["flops"] = float(cost.get("flops", float("nan")))
    out["bytes_accessed"] = float(cost.get("bytes accessed", float("nan")))
  return out


def compile_only(config: ml_collections.ConfigDict, mesh=None) -> list[dict]:
  """Lowers and compiles every stage's train step for the mesh; trains nothing.

  Prints one line per stage with XLA's per-device memory and FLOP estimates, so
  a config can be checked against an accelerator's memory before a job runs.
  """
  exp = Experiment(config, mesh=mesh)
  log(preflight_line(exp))
  reports = []
  for key in exp.all_step_keys(stage_keys(config)):
    start = time.perf_counter()
    report = compile_report(exp.compiler(key))
    report["stage"] = "all" if key is None else step_lib._describe(key)
    report["compile_seconds"] = round(time.perf_counter() - start, 2)
    reports.append(report)
    mib = lambda n: f"{n / 2**20:.2f} MiB"
    mem_txt = (f"memory/device: args {mib(report['argument_size_in_bytes'])}, temp "
               f"{mib(report['temp_size_in_bytes'])}, peak ~{mib(report['peak_bytes_estimate'])}"
               if "peak_bytes_estimate" in report else "memory/device: n/a on this backend")
    flop_txt = (f"{report['flops'] / 1e9:.4g} GFLOP/step/device" if "flops" in report
                else "FLOPs: n/a on this backend")
    log(f"compiled {report['stage']} in {report['compile_seconds']:.1f} s: {mem_txt}; {flop_txt}")
  return reports


# ----------------------------------------------------------------- sampling

def make_sample_fn(exp: Experiment, objective: base.Objective | None = None):
  """(params, latents, key) -> samples, jitted and sharded over the batch axes."""
  from jaxdiff import sampling
  s = exp.config.sample
  objective = objective or exp.objective

  def sample(params, latents, key):
    if hasattr(objective, "sample"):  # objectives with their own sampler (consistency.py)
      return objective.sample(params, latents, key, s)
    if objective.sampler_kind == "consistency":
      return sampling.consistency_sampler(objective.denoiser(params), latents,
                                          jnp.asarray(s.consistency_sigmas, latents.dtype), key=key)
    return sampling.edm_sampler(objective.denoiser(params), latents, num_steps=s.num_steps,
                                sigma_min=s.sigma_min, sigma_max=s.sigma_max, rho=s.rho)

  shard = parallel.batch_sharding(exp.mesh, 1 + len(exp.example_shape))
  return jax.jit(sample, out_shardings=shard), shard


def sampling_params(exp: Experiment, state, use_ema: bool = True):
  """The weights the sampler gets; an objective may add state (SCT's guidance snapshot)."""
  params = state.ema_params if use_ema else state.params
  hook = getattr(exp.objective, "sampling_params", None)
  return hook(params, state.aux) if hook is not None else params


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
  params = sampling_params(exp, state, use_ema)
  samples = generate(exp, params, num_samples, seed=seed)
  weights = "ema" if use_ema else "raw"
  out = {"step": step, "weights": weights}
  if jax.process_index() == 0:
    out.update(save_sample_outputs(config, samples, out_dir or os.path.join(workdir, "samples"),
                                   f"sample_step{step}_{weights}_seed{seed}_n{num_samples}"))
  log(f"wrote {num_samples} samples ({weights} weights, step {step}) to {out.get('samples_png')}")
  return out
