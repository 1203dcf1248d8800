"""Failure mode: data or weights that are not what the config says.

A dataset whose examples have another shape than the config, and weights files
that do not exist (init_from, a workdir without checkpoints, Inception weights),
end with exit code 2 and one line naming the path or the shapes and the fix.
"""
import pytest

from jaxdiff.commands import sample
import reliability_utils as ru


def error_line(proc):
  lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
  assert lines, proc.stderr[-3000:]
  return lines[-1]


def test_dataset_of_the_wrong_shape(tmp_path):
  proc = ru.run_main("configs/digits_edm.py:smoke", tmp_path / "w",
                     extra_flags=("--config.data.image_size=32",))
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  line = error_line(proc)
  assert "examples of shape (8, 8, 1)" in line and "expects (32, 32, 1)" in line, line


def test_missing_init_from_weights(tmp_path):
  missing = tmp_path / "no_such_run"
  proc = ru.run_main("configs/toy2d_edm.py:smoke", tmp_path / "w",
                     extra_flags=(f"--config.init_from={missing}",))
  assert proc.returncode == 2, proc.stderr[-3000:]
  line = error_line(proc)
  assert f"config.init_from='{missing}' has no checkpoint in {missing}/checkpoints" in line, line
  assert "Traceback" not in proc.stderr


def test_sampling_a_workdir_without_checkpoints(tmp_path):
  with pytest.raises(FileNotFoundError, match=rf"No checkpoint in {tmp_path}/checkpoints; "
                                              r"train first"):
    sample.sample_from_workdir(ru.toy_config(), str(tmp_path), num_samples=4)


def test_missing_inception_weights_file(tmp_path):
  inception = pytest.importorskip("jaxdiff.evaluation.inception")
  with pytest.raises(FileNotFoundError, match=rf"Inception weights file not found: "
                                              rf"{tmp_path}/pt_inception\.pth"):
    inception.load_params(str(tmp_path / "pt_inception.pth"))
