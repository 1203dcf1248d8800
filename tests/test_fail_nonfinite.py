"""Failure mode: non-finite loss (NaN/inf data, a diverging learning rate).

With config.optim.nonfinite='skip' a non-finite step leaves the parameters,
EMA and optimizer state untouched and is counted; more than
config.optim.max_consecutive_nonfinite in a row stop the run with
NonFiniteLossError, and the last good checkpoint is intact and loadable.
"""
import json
import os

import jax
import numpy as np
import pytest

from jaxdiff import errors
from jaxdiff import checkpoint
from jaxdiff.data import pipeline
from jaxdiff.train import loop
import reliability_utils as ru


def poison(monkeypatch, bad_steps):
  """Makes the batches of `bad_steps` NaN (a data hook: a corrupt record, say)."""
  original = pipeline.StepBatcher.__call__

  def call(self, step):
    batch = original(self, step)
    if step in bad_steps:
      batch = {k: np.full_like(v, np.nan) if v.dtype.kind == "f" else v for k, v in batch.items()}
    return batch

  monkeypatch.setattr(pipeline.StepBatcher, "__call__", call)


def metrics_of(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_skip_counts_a_nonfinite_step_and_training_goes_on(tmp_path, monkeypatch):
  poison(monkeypatch, {3})  # the 4th step
  c = ru.toy_config({"train.num_steps": 6, "train.log_every": 1, "train.ckpt_every": 6})
  loop.train(c, str(tmp_path), mesh=ru.mesh_of(2))
  m = {}
  for d in metrics_of(tmp_path):
    m.setdefault(d["step"], {}).update(d)
  assert not np.isfinite(m[4]["loss"])
  assert [m[s]["nonfinite_steps"] for s in range(1, 7)] == [0, 0, 0, 1, 1, 1]
  assert [m[s]["nonfinite_streak"] for s in range(1, 7)] == [0, 0, 0, 1, 0, 0]
  assert all(np.isfinite(m[s]["loss"]) for s in (1, 2, 3, 5, 6))
  _, _, state = ru.restore(tmp_path, c, mesh=ru.mesh_of(2))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


def test_skipped_step_leaves_the_state_untouched(tmp_path, monkeypatch):
  c = ru.toy_config({"train.num_steps": 3, "train.ckpt_every": 3})
  loop.train(c, str(tmp_path), mesh=ru.mesh_of(1))
  _, _, before = ru.restore(tmp_path, c, mesh=ru.mesh_of(1))
  poison(monkeypatch, {3})
  c4 = ru.toy_config({"train.num_steps": 4, "train.ckpt_every": 1})
  loop.train(c4, str(tmp_path), mesh=ru.mesh_of(1))  # resumes at 3; step 4's batch is NaN
  _, _, after = ru.restore(tmp_path, c4, mesh=ru.mesh_of(1))
  for name in ("params", "ema_params", "opt_state"):
    ru.assert_trees_equal(getattr(after, name), getattr(before, name))
  assert int(after.step) == 4 and int(after.nonfinite_steps) == 1


def test_too_many_in_a_row_stop_with_the_last_good_checkpoint_intact(tmp_path, monkeypatch):
  poison(monkeypatch, set(range(5, 100)))
  c = ru.toy_config({"train.num_steps": 12, "train.ckpt_every": 4, "train.log_every": 1,
                     "optim.max_consecutive_nonfinite": 2})
  with pytest.raises(errors.NonFiniteLossError,
                     match=r"3 consecutive steps had non-finite gradients \(up to step 8\).*"
                           r"last good checkpoint .* is intact; lower config\.optim\.lr"):
    loop.train(c, str(tmp_path), mesh=ru.mesh_of(2))
  ck = checkpoint.Checkpointer(os.path.join(tmp_path, "checkpoints"))
  assert ck.all_steps() == [4]  # the stop came before the step-8 save
  ck.close()
  step, _, state = ru.restore(tmp_path, c, mesh=ru.mesh_of(2))
  assert step == 4 and int(state.nonfinite_steps) == 0
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state))


def test_diverging_learning_rate_stops_the_run(tmp_path):
  c = ru.toy_config({"train.num_steps": 20, "train.ckpt_every": 2, "optim.lr": 1e30,
                     "optim.max_consecutive_nonfinite": 3})
  with pytest.raises(errors.NonFiniteLossError, match="consecutive steps had non-finite"):
    loop.train(c, str(tmp_path), mesh=ru.mesh_of(1))
  step, _, state = ru.restore(tmp_path, c, mesh=ru.mesh_of(1))
  assert step >= 2
  # Skipped steps never reach the saved weights: they are those of the last finite update.
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))
