"""End-to-end training: smoke runs, sharding equivalence, exact resume, bad config."""
import json
import os

import jax
import numpy as np
import pytest

from jaxdiff.train.experiment import Experiment
from jaxdiff import config as config_lib
from jaxdiff import parallel
from jaxdiff.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str = "smoke"):
  return config_lib.load_config(f"{name}:{arg}")


def toy_config(**overrides):
  c = load_config("toy2d_edm")
  c.train.loss_buckets = 0
  for key, value in overrides.items():
    section, name = key.split("__")
    c[section][name] = value
  return c


def mesh_of(n: int, fsdp: int = 1):
  import ml_collections
  return parallel.make_mesh(ml_collections.ConfigDict({"data": n // fsdp, "fsdp": fsdp}),
                            devices=jax.devices()[:n])


def losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f if "loss" in json.loads(line)]


def final_params(workdir, config, mesh):
  exp = Experiment(config, mesh=mesh)
  from jaxdiff import checkpoint
  ck = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  state, _, step = ck.restore_latest(exp.abstract_state)
  ck.close()
  return step, jax.device_get(state)


def test_smoke_toy2d_end_to_end(tmp_path):
  summary = loop.train(load_config("toy2d_edm"), str(tmp_path), mesh=mesh_of(1))
  assert summary["step"] == 8
  assert os.path.exists(summary["samples_png"]) and os.path.exists(summary["samples_npz"])
  assert summary["quality"]["name"] == "sliced_w2" and np.isfinite(summary["quality"]["value"])
  assert os.path.exists(tmp_path / "config.json")
  assert any(f.startswith("events") for f in os.listdir(tmp_path / "tensorboard"))
  assert len(summary["compilations"]) == 1  # one stage, one compilation


def test_smoke_digits_end_to_end(tmp_path):
  summary = loop.train(load_config("digits_edm"), str(tmp_path), mesh=mesh_of(2))
  assert summary["step"] == 6
  assert summary["quality"]["name"] == "digits_fid"
  assert np.isfinite(summary["quality"]["value"])
  samples = np.load(summary["samples_npz"])["samples"]
  assert samples.shape == (64, 8, 8, 1)


def test_eight_devices_match_one_device(tmp_path):
  """Data parallelism must not change the math: same losses to float32 rounding."""
  # Dropout on: the per-step randomness must not depend on the mesh either.
  c = toy_config(train__num_steps=6, train__log_every=1, model__dropout=0.1)
  loop.train(c, str(tmp_path / "one"), mesh=mesh_of(1))
  loop.train(c, str(tmp_path / "eight"), mesh=mesh_of(8))
  one, eight = losses(tmp_path / "one"), losses(tmp_path / "eight")
  assert len(one) == 6
  # 8-way reductions reorder float32 sums: agreement to ~1e-5 relative.
  np.testing.assert_allclose(eight, one, rtol=2e-5)


def test_fsdp_shards_params_and_matches(tmp_path):
  # Wide enough that the hidden kernels pass the FSDP size threshold.
  c = toy_config(train__num_steps=4, train__log_every=1, mesh__fsdp=4, mesh__data=2,
                 model__hidden_dim=128)
  exp = Experiment(c, mesh=mesh_of(8, fsdp=4))
  specs = [s.spec for s in jax.tree.leaves(exp.state_sharding.params)]
  assert any("fsdp" in tuple(spec) for spec in specs), specs
  loop.train(c, str(tmp_path / "fsdp"), mesh=mesh_of(8, fsdp=4))
  c1 = toy_config(train__num_steps=4, train__log_every=1, model__hidden_dim=128)
  loop.train(c1, str(tmp_path / "dp"), mesh=mesh_of(1))
  np.testing.assert_allclose(losses(tmp_path / "fsdp"), losses(tmp_path / "dp"), rtol=2e-5)


def test_resume_equals_uninterrupted(tmp_path):
  """Stop at step 4, rerun to 8: bit-identical to one uninterrupted 8-step run."""
  c = toy_config(train__num_steps=8, train__ckpt_every=2)
  loop.train(c, str(tmp_path / "straight"), mesh=mesh_of(2))
  c_half = toy_config(train__num_steps=4, train__ckpt_every=2)
  loop.train(c_half, str(tmp_path / "resumed"), mesh=mesh_of(2))
  loop.train(c, str(tmp_path / "resumed"), mesh=mesh_of(2))
  step_a, a = final_params(tmp_path / "straight", c, mesh_of(2))
  step_b, b = final_params(tmp_path / "resumed", c, mesh_of(2))
  assert step_a == step_b == 8
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_resume_with_changed_config_names_the_keys(tmp_path):
  c = toy_config(train__num_steps=2, train__ckpt_every=2)
  loop.train(c, str(tmp_path), mesh=mesh_of(1))
  c2 = toy_config(train__num_steps=2, train__ckpt_every=2, optim__lr=0.5)
  with pytest.raises(config_lib.ConfigError, match=r"optim\.lr: 0\.001 \(workdir\) -> 0\.5"):
    loop.train(c2, str(tmp_path), mesh=mesh_of(1))


def test_resume_accepts_new_keys_at_their_defaults_and_memory_levers(tmp_path):
  """A run from an older jaxdiff lacks keys added since; they take their defaults. The
  memory levers (microbatches, remat) may change on resume: same method, other layout."""
  c = toy_config(train__num_steps=2, train__ckpt_every=2)
  loop.train(c, str(tmp_path), mesh=mesh_of(1))
  path = os.path.join(tmp_path, "config.json")
  with open(path) as f:
    saved = json.load(f)
  del saved["train"]["microbatches"], saved["model"]["remat"]
  with open(path, "w") as f:
    json.dump(saved, f)
  c4 = toy_config(train__num_steps=4, train__ckpt_every=2, train__microbatches=2,
                  model__remat="full")
  assert loop.train(c4, str(tmp_path), mesh=mesh_of(1))["step"] == 4


@pytest.mark.parametrize("key,value,match", [
    ("data__name", "mnist", r"config\.data\.name='mnist' is not allowed"),
    ("optim__name", "sgd", r"config\.optim\.name='sgd'"),
    ("objective__name", "score_sde", r"config\.objective\.name='score_sde'"),
    ("ema__kind", "post_hoc", r"config\.ema\.kind='post_hoc'"),
    ("train__num_steps", 0, r"config\.train\.num_steps=0 must be a number > 0"),
])
def test_invalid_config_values_are_named(key, value, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(toy_config(**{key: value}))


def test_batch_not_divisible_names_the_fix():
  c = toy_config(data__batch_size=12)
  with pytest.raises(config_lib.ConfigError, match=r"not divisible by the 8 devices.*batch_size=8 or 16"):
    Experiment(c, mesh=mesh_of(8))


def test_locked_config_rejects_unknown_key():
  c = toy_config()
  c.lock()  # what --config does (lock_config=True)
  with pytest.raises(AttributeError, match="lr"):
    c.optim.lrr = 0.1


def test_wrong_dataset_shape_is_explained():
  c = load_config("digits_edm")
  c.data.image_size = 32
  with pytest.raises(ValueError, match=r"examples of shape \(8, 8, 1\).*expects \(32, 32, 1\)"):
    Experiment(c, mesh=mesh_of(1))


def test_update_if_runs_the_update_or_keeps_the_state_bit_for_bit():
  """The skip guard: one lax.cond, the same numbers as a per-leaf select, NaN metrics on skip."""
  import jax.numpy as jnp
  import optax
  from jaxdiff import optim
  tx = optax.adam(1e-2)
  params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
  grads = jax.tree.map(lambda p: 0.1 * p + 0.3, params)
  opt = tx.init(params)

  def update():
    upd, new_opt = tx.update(grads, opt, params)
    new = optax.apply_updates(params, upd)
    return (new, new_opt), {"n": jnp.asarray(3, jnp.int32), "norm": optax.tree.norm(upd)}

  step = jax.jit(lambda ok: optim.update_if(ok, update, (params, opt)))
  (taken, taken_opt), m = step(jnp.asarray(True))
  (expect, expect_opt), m_expect = update()
  for a, b in zip(jax.tree.leaves((taken, taken_opt, m)),
                  jax.tree.leaves((expect, expect_opt, m_expect))):
    np.testing.assert_array_equal(a, b)
  (kept, kept_opt), m = step(jnp.asarray(False))
  for a, b in zip(jax.tree.leaves((kept, kept_opt)), jax.tree.leaves((params, opt))):
    np.testing.assert_array_equal(a, b)
  assert int(m["n"]) == 0 and np.isnan(float(m["norm"]))
