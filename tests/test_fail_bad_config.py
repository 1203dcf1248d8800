"""Failure mode: a bad command line or config.

Each mistake ends `python -m jaxdiff.main` with exit code 2 and one line on
stderr that names the key, the value and the fix, without a traceback, and
without touching the workdir's checkpoints.
"""
import os
import re

import pytest

from jaxdiff.train import loop
import reliability_utils as ru

TOY = "configs/toy2d_edm.py:smoke"


def snapshot(directory):
  """{path: (size, mtime)} of every file below a directory."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      out[path] = (os.path.getsize(path), os.path.getmtime(path))
  return out


def last_error_line(proc):
  lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
  assert lines, proc.stderr[-3000:]
  return lines[-1]


@pytest.mark.parametrize("flag,match", [
    # A typo in a key: the locked config refuses it and suggests the right one.
    ("--config.optim.lrr=1", r"unknown config key config\.optim\.lrr; did you mean "
                             r"config\.optim\.lr\?"),
    # A value of the wrong type.
    ("--config.train.num_steps=abc", r"flag --config\.train\.num_steps=abc: invalid literal "
                                     r"for int\(\)"),
    # A batch that does not split over the 8 devices: the fix is in the message.
    ("--config.data.batch_size=12", r"config\.data\.batch_size=12 is not divisible by the 8 "
                                    r"devices of the mesh; use a multiple of 8, e\.g\. "
                                    r"--config\.data\.batch_size=8 or 16"),
])
def test_bad_flag_is_one_clear_line(tmp_path, flag, match):
  proc = ru.run_main(TOY, tmp_path / "w", extra_flags=(flag,))
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert re.search(match, last_error_line(proc)), last_error_line(proc)
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_bad_recipe_argument(tmp_path):
  proc = ru.run_main("configs/toy2d_edm.py:smok", tmp_path / "w")
  assert proc.returncode == 2
  line = last_error_line(proc)
  assert "Unknown config arg 'smok'; use '' or 'smoke'" in line and "Traceback" not in line


def test_workdir_of_another_recipe_is_refused_untouched(tmp_path):
  work = tmp_path / "toy"
  loop.train(ru.toy_config({"train.num_steps": 2, "train.ckpt_every": 2}), str(work),
             mesh=ru.mesh_of(1))
  before = snapshot(work)
  proc = ru.run_main("configs/digits_edm.py:smoke", work)
  assert proc.returncode == 2, proc.stderr[-3000:]
  err = proc.stderr
  assert f"The workdir {work} holds a run with a different config" in err
  assert "data.name: 'toy2d' (workdir) -> 'digits' (now)" in err
  assert "--allow_config_change" in err
  assert snapshot(work) == before  # nothing written, nothing lost
