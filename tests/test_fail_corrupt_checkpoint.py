"""Failure mode: the newest checkpoint is truncated or corrupt.

Restoring moves it aside to `corrupt-<step>/` (kept, never deleted), says so,
and falls back to the previous checkpoint; resuming from there reproduces the
lost steps exactly. Orbax's OCDBT data files carry checksums, so a flipped bit
fails the restore instead of loading wrong numbers.
"""
import glob
import os
import shutil

import pytest

from jaxdiff.train.experiment import Experiment
from jaxdiff import checkpoint
from jaxdiff.train import loop
import reliability_utils as ru

OVERRIDES = {"train.num_steps": 8, "train.ckpt_every": 4, "train.log_every": 4}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished 8-step run with checkpoints at steps 4 and 8, and its final state."""
  work = tmp_path_factory.mktemp("trained") / "run"
  c = ru.toy_config(OVERRIDES)
  loop.train(c, str(work), mesh=ru.mesh_of(2))
  exp = Experiment(c, mesh=ru.mesh_of(2))
  step, _, state = ru.restore(work, c, mesh=ru.mesh_of(2))
  assert step == 8
  return work, exp, state


def data_files(step_dir):
  return [f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
          if os.path.isfile(f)]


def truncate_data(step_dir):
  for f in data_files(step_dir):
    os.truncate(f, os.path.getsize(f) // 2)


def flip_one_bit(step_dir):
  for f in data_files(step_dir):
    with open(f, "r+b") as fh:
      fh.seek(os.path.getsize(f) // 2)
      byte = fh.read(1)
      fh.seek(-1, os.SEEK_CUR)
      fh.write(bytes([byte[0] ^ 0x01]))


def delete_data(step_dir):
  for f in data_files(step_dir):
    os.remove(f)


def truncate_metadata(step_dir):
  os.truncate(os.path.join(step_dir, "state", "_METADATA"), 100)


def empty_every_file(step_dir):  # e.g. a disk that filled up
  for root, _, files in os.walk(step_dir):
    for name in files:
      os.truncate(os.path.join(root, name), 0)


def corrupt_host_json(step_dir):
  with open(os.path.join(step_dir, "host", "metadata"), "w") as f:
    f.write("{not json")


@pytest.mark.parametrize("damage", [truncate_data, flip_one_bit, delete_data, truncate_metadata,
                                    empty_every_file, corrupt_host_json])
def test_damaged_latest_checkpoint_falls_back(trained, tmp_path, damage, capsys):
  work, exp, _ = trained
  directory = tmp_path / "checkpoints"
  shutil.copytree(work / "checkpoints", directory)
  damage(str(directory / "8"))
  ck = checkpoint.Checkpointer(str(directory))
  restored = ck.restore_latest(exp.abstract_state)
  ck.close()
  assert restored is not None and restored[2] == 4
  assert sorted(os.listdir(directory)) == ["4", "corrupt-8"]  # kept for inspection
  out = capsys.readouterr().out
  assert "WARNING: checkpoint step 8 is unreadable" in out and "falling back to step 4" in out


def test_all_checkpoints_damaged_starts_fresh_and_says_so(trained, tmp_path, capsys):
  work, exp, _ = trained
  directory = tmp_path / "checkpoints"
  shutil.copytree(work / "checkpoints", directory)
  truncate_data(str(directory / "8"))
  truncate_data(str(directory / "4"))
  ck = checkpoint.Checkpointer(str(directory))
  assert ck.restore_latest(exp.abstract_state) is None
  ck.close()
  assert sorted(os.listdir(directory)) == ["corrupt-4", "corrupt-8"]
  assert "no older checkpoint: starting fresh" in capsys.readouterr().out


def test_resume_after_truncation_reproduces_the_lost_steps(trained, tmp_path):
  work, _, final = trained
  copy = tmp_path / "run"
  shutil.copytree(work, copy)
  truncate_data(str(copy / "checkpoints" / "8"))
  os.remove(copy / "summary.json")
  loop.train(ru.toy_config(OVERRIDES), str(copy), mesh=ru.mesh_of(2))  # from step 4 to 8
  step, _, state = ru.restore(copy, ru.toy_config(OVERRIDES), mesh=ru.mesh_of(2))
  assert step == 8
  ru.assert_trees_equal(state, final)
  assert os.path.isdir(copy / "checkpoints" / "corrupt-8")
