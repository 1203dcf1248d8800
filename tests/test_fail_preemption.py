"""Failure mode: preemption (SIGTERM) and a save killed half-way.

SIGTERM to a training process saves a checkpoint at the next step boundary and
exits 0; rerunning the command continues to exactly the parameters of an
uninterrupted run. A save killed before it committed leaves the previous
checkpoint the newest readable one. (Multi-host preemption, where SIGTERM to one
process stops all of them at one agreed step, is in tests/test_multihost.py.)
"""
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np

from jaxdiff import checkpoint
from jaxdiff.train import loop
import reliability_utils as ru

CONFIG = "configs/toy2d_edm.py:smoke"


def test_sigterm_saves_exits_cleanly_and_resumes_exactly(tmp_path, capsys):
  overrides = dict(ru.RESUME)  # 24 steps, 2 curriculum stages, a checkpoint every 4
  work = tmp_path / "preempted"
  proc = ru.start_main(CONFIG, work, overrides, log_path=tmp_path / "first.log")
  try:
    assert ru.wait_for_step(proc, work, 2), open(tmp_path / "first.log").read()[-3000:]
    assert ru.kill(proc, signal.SIGTERM) == 0  # a clean exit
  finally:
    ru.kill(proc)
  log = open(tmp_path / "first.log").read()
  saved = [ln for ln in log.splitlines() if ln.startswith("preemption: saved step")]
  assert len(saved) == 1, log[-3000:]
  step = int(saved[0].split()[3])
  assert 2 <= step < ru.RESUME_STEPS
  ck = checkpoint.Checkpointer(os.path.join(work, "checkpoints"))
  assert ck.latest_step() == step  # saved at the step boundary after the signal
  ck.close()
  assert not os.path.exists(work / "summary.json")  # it stopped, it did not finish

  # Resume (in this process: the CLI's rerun is the same train(), minus a start-up).
  c = ru.toy_config(overrides)
  loop.train(c, str(work))
  assert f"resumed from step {step}" in capsys.readouterr().out
  s1, host1, resumed = ru.restore(work, c)
  s2, host2, straight = ru.straight_run(overrides)
  assert s1 == s2 == ru.RESUME_STEPS and host1 == host2
  ru.assert_trees_equal(resumed, straight)  # params, EMA, optimizer state, counters


KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from orbax.checkpoint._src.path import atomicity
    from jaxdiff import checkpoint

    ck = checkpoint.Checkpointer(sys.argv[1])
    ck.save(1, {"w": np.full((256,), 1.0, np.float32)}, {"note": "first"})
    ck.wait()

    async def die(self, *args, **kwargs):  # the data is written, the commit never happens
      os.kill(os.getpid(), signal.SIGKILL)
    atomicity.AtomicRenameTemporaryPath.finalize = die
    ck.save(2, {"w": np.full((256,), 2.0, np.float32)}, {"note": "second"})
    ck.wait()
    print("not killed")
""")


def test_killed_save_leaves_previous_checkpoint_usable(tmp_path):
  directory = str(tmp_path / "ckpt")
  proc = subprocess.run([sys.executable, "-c", KILLED_SAVE, directory], cwd=ru.ROOT,
                        env=ru.subprocess_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr[-2000:]
  leftovers = [d for d in os.listdir(directory) if "tmp" in d]
  assert leftovers and leftovers[0].startswith("2."), os.listdir(directory)  # the killed save

  ck = checkpoint.Checkpointer(directory)
  abstract = {"w": np.zeros((256,), np.float32)}
  assert ck.all_steps() == [1]
  state, host, step = ck.restore_latest(abstract)
  assert step == 1 and host == {"note": "first"}
  np.testing.assert_array_equal(state["w"], np.full((256,), 1.0, np.float32))
  # Step 2 can be saved again, and the half-written directory is cleaned up
  # (orbax removes it in the background once the manager opens).
  assert ck.save(2, {"w": np.full((256,), 2.0, np.float32)}, {"note": "again"})
  ck.wait()
  assert ck.restore_latest(abstract)[2] == 2
  ck.close()
  assert sorted(os.listdir(directory)) == ["1", "2"]
