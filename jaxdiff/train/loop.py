"""The training loop: `train()` as a short sequence of named stages.

  set up      the Experiment, the workdir's config check, checkpoints, the curriculum
  start       restore the newest readable checkpoint, or initialise (from `init_from`,
              or from a run the objective asks to train first)
  steps       one compiled step per curriculum stage (later stages compile in the
              background), then per step: curriculum, guard, logs, checkpoints,
              preemption, samples, FID
  finish      final samples and quality figure, summary.json

A rerun on the same workdir continues exactly where the last checkpoint left
off, because every schedule is a function of the checkpointed state and the
batch of a step is a function of (seed, step).
"""
from __future__ import annotations

import copy
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from jaxdiff import checkpoint as ckpt_lib
from jaxdiff import console, lock
from jaxdiff import workdir as workdir_lib
from jaxdiff.curriculum.runtime import Curriculum, StagePrecompiler
from jaxdiff.data import pipeline
from jaxdiff.errors import NonFiniteLossError
from jaxdiff.train import fid as fid_lib
from jaxdiff.train import samples
from jaxdiff.train.experiment import Experiment
from jaxdiff.train.metrics import MetricWriter, Progress


def train(config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False,
          mesh=None) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the final summary.

  The workdir has one writer: its lock is held from the start to the end
  (jaxdiff/lock.py); a second job on it stops at once, naming this one.
  """
  workdir_lib.check_path(workdir)
  with lock.WorkdirLock(workdir):
    workdir_lib.inherit_network_constants(config)
    exp = Experiment(config, mesh=mesh)
    console.log(exp.preflight_line())  # before any restore or compilation
    workdir_lib.check_config(workdir, config, allow_config_change)
    console.move_log(os.path.join(workdir, "logs", f"process_{jax.process_index()}.log"))
    trainer = Trainer(exp, workdir)  # closes what it opened if it fails
    try:
      summary = trainer.run()
    except BaseException:
      trainer.close(quiet=True)  # a failure while closing must not hide this one
      raise
    trainer.close()
    return summary


def init_from_dir(exp: Experiment, workdir: str) -> str:
  """config.init_from, or the run the objective asks to train first (then trained here)."""
  config = exp.config
  if config.init_from:
    return config.init_from
  pre = exp.objective.pretrain_config(config)
  if pre is None:
    return ""
  pre_dir = os.path.join(workdir, "pretrain")
  done = os.path.join(pre_dir, "summary.json")
  if os.path.exists(done):
    with open(done) as f:
      if json.load(f).get("step", 0) >= pre.train.num_steps:
        return pre_dir
  console.log(f"init_from is empty: first training {pre.objective.name} for "
              f"{pre.train.num_steps} steps in {pre_dir}")
  train(pre, pre_dir, mesh=exp.mesh)
  return pre_dir


def load_init_from(exp: Experiment, state, init_from: str):
  """A fresh state whose params and EMA are `init_from`'s EMA weights (as ECT starts from
  EDM's); the objective's own state (a CT teacher) is derived from them."""
  weights, step = workdir_lib.read_init_weights(init_from, exp.config,
                                                exp.abstract_state.ema_params)
  copy = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=exp.state_sharding.params)
  aux = jax.jit(exp.objective.init_aux, out_shardings=exp.state_sharding.aux)(weights)
  console.log(f"initialised params and EMA from the EMA weights of {init_from} (step {step})")
  return state.replace(params=copy(weights), ema_params=copy(weights), aux=aux)


class Trainer:
  """The state of one training run between its named stages."""

  def __init__(self, exp: Experiment, workdir: str):
    config = exp.config
    self.exp, self.config, self.workdir = exp, config, workdir
    self.total = int(config.train.num_steps)
    self.checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                              keep=config.train.keep_checkpoints)
    self.curriculum = Curriculum(config.curriculum)
    # One compiled step per curriculum stage; later stages compile in the background.
    self.stage_steps = StagePrecompiler(exp.compiler)
    self.writer = self.batches = self.watch = self.metrics = None
    # The newest step's metrics, read on the host one step later (no per-step sync), and
    # the stage of the first step after a resume (see `host_state`).
    self.pending: tuple[int, dict] | None = None
    self.resumed_stage: int | None = None
    try:
      self.state = self.start_state()
      self.step = int(self.state.step)
      console.log(f"steps {self.step}->{self.total}")
      self.writer = MetricWriter(workdir)
      self.fid = fid_lib.InLoopFID(exp, workdir)
      # Batches of the next steps are read and put on the devices in a background thread.
      if config.data.prefetch:
        self.batches = pipeline.Prefetcher(exp.global_batch, self.step, config.data.prefetch)
      self.progress = Progress(self.total, self.step)
      self.watch = ckpt_lib.PreemptionWatch(self.checkpointer)
    except BaseException:
      self.close(quiet=True)
      raise

  # ---------------------------------------------------------------- stages

  def start_state(self):
    """The newest readable checkpoint's state, or a new one (from init_from if set)."""
    exp = self.exp
    restored = self.checkpointer.restore_latest(exp.abstract_state)
    if restored is not None:
      state, host, step = restored
      self.curriculum.load_state_dict(host.get("curriculum", {}))
      self.resumed_stage = host.get("curriculum_next_stage")
      console.log(f"resumed from step {step} in {self.checkpointer.directory}")
      return state
    init_from = init_from_dir(exp, self.workdir)
    state = exp.init_state()
    return load_init_from(exp, state, init_from) if init_from else state

  def run(self) -> dict:
    self.precompile(current_stage=True)
    while self.step < self.total:
      trained_stage = self.train_step()
      self.log(trained_stage)
      if self.step % self.config.train.ckpt_every == 0 or self.step == self.total:
        self.checkpointer.save(self.step, self.state, self.host_state())
      if self.watch.should_stop(self.step):
        return self.save_and_stop()
      every = self.config.train.sample_every
      if every and self.step % every == 0 and self.step < self.total:
        samples.write_samples(self.exp, self.state, self.workdir, self.step, self.writer)
      if self.fid.due(self.step, self.total):
        self.fid(self.state, self.step, self.writer)
    return self.finish()

  def precompile(self, current_stage: bool) -> None:
    """Queues the current stage's other update variants (ACT's R1 step) or all of them
    (after a stage change), then the coming stages, for background compilation."""
    exp, cur = self.exp, self.curriculum
    now = exp.all_step_keys([cur.mask()])
    if current_stage:
      now = [k for k in now if k != exp.step_key(cur.mask(), self.step)]
    self.stage_steps.prefetch(now)
    self.stage_steps.prefetch(exp.all_step_keys(cur.keys_to_precompile()))

  def train_step(self) -> int:
    """Dispatches one update, then reads the previous one's scalars; returns the stage it
    trained on.

    The host reads device values one step behind: the loss the patience rule needs
    and the non-finite streak of step s - 1 are read while step s runs, so the host
    never waits for the step it just dispatched and keeps the device busy (the values
    are global-batch reductions: every host decides alike). The stage of step s + 1
    is therefore decided by the losses of steps up to s - 1, also after a resume.
    """
    exp, cur = self.exp, self.curriculum
    trained_stage = cur.stage if self.resumed_stage is None else self.resumed_stage
    self.resumed_stage = None
    step_fn = self.stage_steps(exp.step_key(cur.mask(trained_stage), self.step))
    batch = self.batches.get(self.step) if self.batches else exp.global_batch(self.step)
    self.state, self.metrics = step_fn(self.state, batch)
    self.step += 1
    previous, self.pending = self.pending, (self.step - 1, self.metrics)
    if cur.enabled and not cur.needs_loss:
      cur.observe(self.step - 1, None)  # fixed pacing: a function of the step alone
    if previous is not None:
      self.observe(*previous)
    if cur.stage != trained_stage:
      console.log(f"curriculum: stage {trained_stage} -> {cur.stage} after step {self.step}")
      self.precompile(current_stage=False)
      # A 20-stage run would otherwise hold 20 executables in host memory.
      self.stage_steps.drop_except(exp.all_step_keys([cur.mask()] + cur.keys_to_precompile()))
    return trained_stage

  def host_scalars(self, metrics: dict) -> dict:
    """The values the host decides on, in one transfer."""
    keys = ("loss", "nonfinite_streak", "loss_newest_cluster", "newest_cluster_count")
    return jax.device_get({k: metrics[k] for k in keys if k in metrics})

  def observe(self, step: int, metrics: dict, pacer=None) -> None:
    """The host's decisions on step `step`'s metrics: the patience rule, the non-finite guard."""
    values = self.host_scalars(metrics)
    streak = int(values["nonfinite_streak"])
    if streak > self.config.optim.max_consecutive_nonfinite:
      raise NonFiniteLossError(
          f"{streak} consecutive steps had non-finite gradients (up to step {step + 1}); the "
          f"run stops. The last good checkpoint in {self.workdir} is intact; lower "
          "config.optim.lr, enable config.optim.grad_clip or check the data.")
    cur = pacer or self.curriculum
    if cur.enabled and cur.needs_loss:
      if "newest_cluster_count" in values:  # curriculum.monitor = "newest_cluster"
        cur.observe(step, float(values["loss_newest_cluster"]),
                    float(values["newest_cluster_count"]))
      else:
        cur.observe(step, float(values["loss"]))

  def log(self, trained_stage: int) -> None:
    cur, step = self.curriculum, self.step
    if step % self.config.train.log_every == 0 or step == self.total:
      scalars = dict(jax.device_get(self.metrics))
      scalars["steps_per_sec"] = self.progress.rate(step)
      if cur.enabled:
        scalars["curriculum/stage"] = trained_stage
      self.writer.write(step, scalars)
      stage_txt = f"  stage {trained_stage}" if cur.enabled else ""
      console.log(self.progress.line(step, float(scalars["loss"]), stage_txt))
    elif cur.enabled:
      self.writer.write(step, {"curriculum/stage": trained_stage})

  def host_state(self) -> dict:
    """The curriculum as of the newest step, and the stage the next step trains on.

    The newest step's loss is still unread (`train_step`); a checkpoint applies it to a
    copy of the pacer, so the saved state has seen every step, and records the stage
    the uninterrupted run uses next (decided one step earlier), which a resumed run uses.
    """
    cur = self.curriculum
    if self.pending is None:
      return {"curriculum": cur.state_dict()}
    seen = copy.deepcopy(cur)
    self.observe(*self.pending, pacer=seen)
    return {"curriculum": seen.state_dict(), "curriculum_next_stage": cur.stage}

  def save_and_stop(self) -> dict:
    self.checkpointer.save(self.step, self.state, self.host_state(), force=True)
    self.checkpointer.wait()
    console.log(f"preemption: saved step {self.step} to {self.checkpointer.directory}; exiting "
                "cleanly. Rerun the same command to resume.")
    return {"preempted": True, "step": self.step}

  def finish(self) -> dict:
    """Final samples, the quality figure and summary.json."""
    exp = self.exp
    if self.pending is not None:
      self.observe(*self.pending)  # the last step's guard
    self.checkpointer.wait()
    self.stage_steps.close()  # a background compilation still running joins the log first
    summary = {"step": self.step, "num_params": exp.num_params,
               "compilations": [(str(k), round(s, 2)) for k, s in exp.compiler.compile_log]}
    if self.metrics is not None:
      summary["final_loss"] = float(self.metrics["loss"])
    summary.update(samples.write_samples(exp, self.state, self.workdir, self.step, self.writer,
                                         final=True))
    if self.fid.latest is not None:
      summary["fid"] = self.fid.latest  # {"last": ..., "best": min over evaluations}
    if self.batches is not None:
      summary["input_wait_seconds"] = round(self.batches.wait_seconds, 3)
    if jax.process_index() == 0:
      with open(os.path.join(self.workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary

  def close(self, quiet: bool = False) -> None:
    """Closes everything it opened, each even if another fails; the first failure is
    raised afterwards, or only logged when `quiet` (the run already failed)."""
    parts = [self.stage_steps, self.watch, self.batches, self.writer, self.checkpointer]
    first = None
    for part in filter(None, parts):
      try:
        part.close()
      except Exception as e:  # noqa: BLE001
        logging.exception("closing %s failed", type(part).__name__)
        first = first or e
    if first is not None and not quiet:
      raise first

