"""Failure mode: the training process dies at random moments.

`python -m jaxdiff.main` on a toy2d smoke run is killed -9 three times (mid
step, mid checkpoint save, mid log line: wherever the moment falls) and rerun
each time with the same command (the last rerun runs in the test process to
save a start-up); the final train state must equal, bit for bit, the one of an
uninterrupted run. The difficulty curriculum is on (fixed
pacing, 2 stages) so kills fall in both stages and resumes cross the change.

Every other objective in the registry goes through the same restore path with
an in-process interruption at a random step (a stop as on preemption, then a
fresh `train()`): what varies per objective is the state it checkpoints, not
how a process dies, and a subprocess per restart would multiply the CPU time
of the suite.
"""
import random

import pytest

from jaxdiff import checkpoint
from jaxdiff import objectives
from jaxdiff.train import loop
import reliability_utils as ru

CONFIG = "configs/toy2d_edm.py:smoke"
NUM_STEPS = ru.RESUME_STEPS
# Per-objective settings that keep toy2d smoke runs tiny.
EXTRA = {"stf": {"stf.reference_size": 128}}
# ACT needs image data, not toy2d points: its exact resume (discriminator, its optimizer,
# ADA state) is tested on its digits smoke recipe in test_act.py.
OTHER_OBJECTIVES = [n for n in ("stf", "ect", "sct") if n in objectives.names()]


def check_equals_uninterrupted(work, overrides, num_devices=None, final_stage=2):
  c = ru.toy_config(overrides)
  mesh = ru.mesh_of(num_devices) if num_devices else None
  s1, host1, resumed = ru.restore(work, c, mesh=mesh)
  s2, host2, straight = ru.straight_run(overrides, num_devices)
  assert s1 == s2 == NUM_STEPS
  assert host1 == host2  # the curriculum pacer's state
  assert host1["curriculum"].get("stage") == final_stage
  ru.assert_trees_equal(resumed, straight)  # params, EMA, optimizer and objective state


def test_kill9_three_times_then_resume_is_bit_exact(tmp_path):
  overrides = dict(ru.RESUME)
  work = tmp_path / "killed"
  rng = random.Random("kill9")
  kills, launches = 0, 0
  while kills < 3:
    launches += 1
    log = tmp_path / f"run{launches}.log"
    proc = ru.start_main(CONFIG, work, overrides, log_path=log)
    # A random moment of training: once a random step past the resume point is
    # logged, plus a random fraction of a step or a save.
    done = max(ru.logged_steps(work), default=0)
    target = min(NUM_STEPS - 1, done + rng.randint(1, 8))
    try:
      reached = ru.wait_for_step(proc, work, target)
      ru.sleep_random(rng, 0.15)
    finally:
      rc = ru.kill(proc)
    assert reached, open(log).read()[-4000:]
    assert rc in (0, -9), open(log).read()[-4000:]  # killed by us, or finished first
    if rc == 0:
      break
    kills += 1
  assert kills >= 2, f"only {kills} kill(s) landed before the run finished"
  # The last rerun in this process (the CLI path of a rerun is the same train()).
  summary = loop.train(ru.toy_config(overrides), str(work))
  assert summary["step"] == NUM_STEPS
  check_equals_uninterrupted(work, overrides)


@pytest.mark.parametrize("objective", OTHER_OBJECTIVES)
def test_objective_resumes_bit_exact_after_a_random_stop(objective, tmp_path, monkeypatch):
  # One device and no curriculum (the kill test above covers the stages): what is
  # checked here is that the objective's own state survives a restart.
  overrides = {**ru.RESUME, "curriculum.enabled": False, "objective.name": objective,
               **EXTRA.get(objective, {})}
  stop = random.Random(f"stop-{objective}").randint(1, NUM_STEPS - 1)
  monkeypatch.setattr(checkpoint.PreemptionWatch, "should_stop", lambda self, step: step == stop)
  c = ru.toy_config(overrides)
  first = loop.train(c, str(tmp_path / "stopped"), mesh=ru.mesh_of(1))
  assert first.get("preempted") and first["step"] == stop
  second = loop.train(c, str(tmp_path / "stopped"), mesh=ru.mesh_of(1))
  assert not second.get("preempted") and second["step"] == NUM_STEPS
  monkeypatch.undo()
  check_equals_uninterrupted(tmp_path / "stopped", overrides, num_devices=1, final_stage=None)
