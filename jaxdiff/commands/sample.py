"""`--mode=sample`: N samples from the latest checkpoint of a run, with EMA or raw weights.

  python -m jaxdiff.main --config=configs/digits_edm.py --workdir=runs/digits_edm \
      --mode=sample --num_samples=64 [--raw_weights] [--sample_seed=1]
"""
from __future__ import annotations

import os

import jax

from jaxdiff import checkpoint as ckpt_lib
from jaxdiff import console
from jaxdiff.train import samples
from jaxdiff.train.experiment import Experiment


def restore(exp: Experiment, workdir: str, step: int = 0):
  """(state, step) of checkpoint `step` of `workdir` (0: the newest readable one)."""
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                       keep=exp.config.train.keep_checkpoints)
  try:
    if step:
      if step not in checkpointer.all_steps():
        raise FileNotFoundError(
            f"config.eval.checkpoint_step={step}: no such checkpoint in {workdir}/checkpoints; "
            f"available: {checkpointer.all_steps()}.")
      restored = checkpointer.restore_step(step, exp.abstract_state)
    else:
      restored = checkpointer.restore_latest(exp.abstract_state)
  finally:
    checkpointer.close()
  if restored is None:
    raise FileNotFoundError(
        f"No checkpoint in {workdir}/checkpoints; train first with "
        f"`python -m jaxdiff.main --config=... --workdir={workdir}`.")
  state, _, step = restored
  return state, step


def load_run(config, workdir: str, use_ema: bool = True, step: int = 0, mesh=None):
  """(experiment, sampling weights, step) of a run's checkpoint (0: the newest readable)."""
  exp = Experiment(config, mesh=mesh)
  state, step = restore(exp, workdir, step)
  return exp, samples.sampling_params(exp, state, use_ema), step


def sample_from_workdir(config, workdir: str, num_samples: int, use_ema: bool = True,
                        seed: int = 0, out_dir: str | None = None) -> dict:
  exp, params, step = load_run(config, workdir, use_ema)
  images = samples.generate(exp, params, num_samples, seed=seed)
  weights = "ema" if use_ema else "raw"
  out = {"step": step, "weights": weights}
  if jax.process_index() == 0:
    out.update(samples.save_sample_outputs(
        config, images, out_dir or os.path.join(workdir, "samples"),
        f"sample_step{step}_{weights}_seed{seed}_n{num_samples}"))
  console.log(f"wrote {num_samples} samples ({weights} weights, step {step}) to "
              f"{out.get('samples_png')}")
  return out
