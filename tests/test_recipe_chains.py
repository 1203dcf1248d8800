"""The papers' recipe chains (README, "Reproduce the papers"): a consistency recipe tunes a
run of the EDM recipe it names (`SOURCE_RECIPE`), and must load that run's weights.

Checked on the full recipes without training anything: the same architecture test
`init_from` applies to a workdir (`workdir.check_init_chain`), on parameter shapes traced
from both configs. One digits chain runs end to end on its `:smoke` variants, through a
layer the official code drops (EDM's augmentation embedding). Every full recipe's train step
compiles on 8 simulated devices in the slow set (README, "Tests", covers it).
"""
import contextlib
import importlib
import os

import jax
import numpy as np
import pytest

from jaxdiff import config as config_lib
from jaxdiff import workdir as workdir_lib
from jaxdiff.errors import ConfigError

RECIPES = config_lib.recipe_names()


def source_of(name):
  return getattr(importlib.import_module(f"configs.{name}"), "SOURCE_RECIPE", None)


def mesh_of(devices, fsdp=1):
  import ml_collections
  from jaxdiff import parallel
  return parallel.make_mesh(ml_collections.ConfigDict({"data": len(devices) // fsdp,
                                                       "fsdp": fsdp}), devices=list(devices))


CHAINS = [(source_of(name), name) for name in RECIPES if source_of(name)]


def test_every_tuning_recipe_names_its_source():
  assert dict((t, s) for s, t in CHAINS) == {
      "digits_ect": "digits_edm", "digits_sct": "digits_edm",
      "cifar10_ect": "cifar10_edm", "cifar10_ect_1h": "cifar10_edm",
      "cifar10_sct": "cifar10_edm", "imagenet64_ect": "imagenet64_edm2",
      "cifar10_sct_cond": "cifar10_edm_cond", "imagenet64_sct": "imagenet64_edm2"}
  for source, _ in CHAINS:
    assert source in RECIPES


@pytest.mark.parametrize("source,target", CHAINS, ids=[t for _, t in CHAINS])
def test_full_recipe_chain_loads(source, target, capsys):
  src, tgt = config_lib.load_config(source), config_lib.load_config(target)
  config_lib.validate(src)
  config_lib.validate(tgt)
  workdir_lib.check_init_chain(src, tgt, source)
  dropped = "dropping map_augment" in capsys.readouterr().out
  # EDM's CIFAR-10 trains with augmentation labels, ECT/SCT without: dropped, as ECT does.
  assert dropped == source.startswith("cifar10_edm")


def test_every_recipe_has_its_sources_in_docs():
  with open(os.path.join(os.path.dirname(__file__), "..", "docs", "recipes.md")) as f:
    page = f.read()
  missing = [name for name in RECIPES if f"`{name}`" not in page]
  assert not missing, f"docs/recipes.md does not describe {missing}"


def test_a_broken_chain_names_the_keys_and_shapes():
  src, tgt = config_lib.load_config("digits_edm"), config_lib.load_config("digits_ect")
  src.model.num_blocks = 2
  with pytest.raises(ConfigError, match=r"model\.num_blocks: 2 \(workdir\) -> 1 \(now\)"):
    workdir_lib.check_init_chain(src, tgt, "digits_edm")
  # A layer the target has and the source lacks is never made up.
  src, tgt = config_lib.load_config("digits_edm"), config_lib.load_config("digits_ect")
  tgt.model.augment_dim = 9
  with pytest.raises(ConfigError, match="augment_dim"):
    workdir_lib.check_init_chain(src, tgt, "digits_edm")


def test_digits_chain_end_to_end_drops_the_augmentation_layer(tmp_path, capsys):
  """digits_edm (here with an augmentation embedding) -> digits_ect via init_from: the
  shared weights arrive exactly, EDM's map_augment is dropped and said so."""
  from jaxdiff import checkpoint
  from jaxdiff.train import loop
  from jaxdiff.train.experiment import Experiment
  mesh = mesh_of(jax.devices()[:1])
  edm = config_lib.load_config("digits_edm:smoke")
  edm.model = config_lib.load_config("digits_ect:smoke").model.copy_and_resolve_references()
  edm.model.augment_dim = 9
  edm.train.num_steps, edm.train.ckpt_every = 2, 2
  loop.train(edm, str(tmp_path / "edm"), mesh=mesh)
  ect = config_lib.load_config("digits_ect:smoke")
  ect.init_from = str(tmp_path / "edm")
  exp = Experiment(ect, mesh=mesh)
  state = loop.load_init_from(exp, exp.init_state(), ect.init_from)
  assert "dropping map_augment" in capsys.readouterr().out
  ck = checkpoint.Checkpointer(os.path.join(tmp_path / "edm", "checkpoints"))
  src_state, _, _ = ck.restore_latest(Experiment(edm, mesh=mesh).abstract_state)
  ck.close()
  src = {jax.tree_util.keystr(k): v
         for k, v in jax.tree_util.tree_flatten_with_path(src_state.ema_params)[0]}
  got = {jax.tree_util.keystr(k): v
         for k, v in jax.tree_util.tree_flatten_with_path(state.params)[0]}
  assert set(src) - set(got) == {"['mapping']['map_augment']['kernel']"}
  for name, value in got.items():
    np.testing.assert_array_equal(np.asarray(value), np.asarray(src[name]))


@pytest.mark.slow  # minutes per recipe; `python -m pytest -m slow tests/test_recipe_chains.py`
@pytest.mark.parametrize("name", RECIPES)
def test_full_recipe_compiles_on_8_devices(name):
  """The paper-scale step lowers and compiles (shapes only: synthetic data of the recipe's
  shape stands in for the dataset, which is not on this machine)."""
  from benchmarks import common as bench
  from jaxdiff.commands.compile import compile_only
  c = config_lib.load_config(name)
  # Synthetic images of the recipe's shape stand in for a tfds dataset; digits and 2-D toy
  # data are built in.
  data = bench.synthetic_data() if c.data.name == "tfds" else contextlib.nullcontext()
  with data:
    reports = compile_only(c, mesh=mesh_of(jax.devices()[:8], fsdp=2))
  assert reports and all(r["compile_seconds"] > 0 for r in reports)
