"""Failure mode: the job comes back on another topology.

A checkpoint written on 8 devices with FSDP (parameters sharded 4 ways)
restores, value for value, onto another mesh shape and onto a single CPU
device, each time laid out in the new mesh's shardings; and a run resumes on
the new mesh (the mesh is not part of the math, so changing it needs no
--allow_config_change).
"""
import jax
import numpy as np
import pytest

from jaxdiff.train.experiment import Experiment
from jaxdiff.train import loop
import reliability_utils as ru

# hidden_dim 128: the MLP's kernels are big enough for the FSDP rule to shard them.
WRITE = {"train.num_steps": 4, "train.ckpt_every": 4, "train.log_every": 1,
         "model.hidden_dim": 128, "mesh.data": 2, "mesh.fsdp": 4}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  work = tmp_path_factory.mktemp("fsdp") / "run"
  c = ru.toy_config(WRITE)
  loop.train(c, str(work), mesh=ru.mesh_of(8, fsdp=4))
  exp = Experiment(c, mesh=ru.mesh_of(8, fsdp=4))
  assert any("fsdp" in tuple(s.spec) for s in jax.tree.leaves(exp.state_sharding.params))
  step, _, state = ru.restore(work, c, mesh=ru.mesh_of(8, fsdp=4))
  assert step == 4
  return work, state


@pytest.mark.parametrize("devices,fsdp", [(4, 2), (8, 1), (2, 2), (1, 1)])
def test_restore_onto_another_mesh(written, devices, fsdp):
  work, original = written
  c = ru.toy_config({**WRITE, "mesh.data": devices // fsdp, "mesh.fsdp": fsdp})
  mesh = ru.mesh_of(devices, fsdp=fsdp)
  exp = Experiment(c, mesh=mesh)
  from jaxdiff import checkpoint
  ck = checkpoint.Checkpointer(str(work / "checkpoints"))
  state, _, step = ck.restore_latest(exp.abstract_state)
  ck.close()
  assert step == 4
  for leaf, want in zip(jax.tree.leaves(state), jax.tree.leaves(exp.state_sharding)):
    assert leaf.sharding.is_equivalent_to(want, leaf.ndim)  # laid out for the new mesh
    assert set(leaf.sharding.device_set) <= set(mesh.devices.ravel())
  ru.assert_trees_equal(jax.device_get(state), original)


def test_resume_on_one_device_continues(written, tmp_path, capsys):
  import shutil
  work = tmp_path / "run"
  shutil.copytree(written[0], work)
  c = ru.toy_config({**WRITE, "train.num_steps": 6, "mesh.data": 1, "mesh.fsdp": 1})
  summary = loop.train(c, str(work), mesh=ru.mesh_of(1))
  out = capsys.readouterr().out
  assert "resumed from step 4" in out and "config change on resume: mesh.fsdp: 4" in out
  assert summary["step"] == 6 and np.isfinite(summary["final_loss"])
