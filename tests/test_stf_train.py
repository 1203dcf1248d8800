"""STF as a training objective (docs/stf.md): reference draws, both modes on a mesh, the real
train step, n = 1 reduction to EDM, curriculum composition, recipe smoke runs."""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdiff.train.experiment import Experiment
from jaxdiff import config as config_lib
from jaxdiff import parallel
from jaxdiff.data import pipeline
from jaxdiff.objectives import stf
from jaxdiff.objectives.edm import EDMObjective
from jaxdiff.objectives.stf.objective import STFObjective
from jaxdiff.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str = "smoke"):
  return config_lib.load_config(f"{name}:{arg}")


def mesh_of(n: int, fsdp: int = 1):
  return parallel.make_mesh(ml_collections.ConfigDict({"data": n // fsdp, "fsdp": fsdp}),
                            devices=jax.devices()[:n])


def toy_stf_config(mode="per_device", reference_size=32, batch_size=64, **overrides):
  c = load_config("toy2d_edm")
  c.objective.name = "stf"
  c.stf.mode = mode
  c.stf.reference_size = reference_size
  c.data.batch_size = batch_size
  c.train.loss_buckets = 0
  for key, value in overrides.items():
    section, name = key.split("__")
    c[section][name] = value
  return c


# ----------------------------------------------------------------------------- reference draws

def _indexed_dataset(n=50, num_classes=5):
  """Image i is the constant i, so a drawn image reveals its dataset index."""
  images = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 2, 2, 1))
  return pipeline.InMemoryDataset(np.array(images), np.arange(n) % num_classes)


def _indices(images):
  return images[:, 0, 0, 0].astype(int)


def test_reference_draws_deterministic_independent_and_split_across_processes():
  ds = _indexed_dataset()
  one = pipeline.StepBatcher(ds, global_batch_size=8, seed=3, process_slice=(0, 8),
                             num_reference=24)
  plain = pipeline.StepBatcher(ds, global_batch_size=8, seed=3, process_slice=(0, 8))
  a, b = one(5), one(5)
  assert a["reference"].shape == (24, 2, 2, 1) and a["reference_label"].shape == (24,)
  np.testing.assert_array_equal(a["reference"], b["reference"])          # pure in (seed, step)
  # The minibatch stream is untouched by the extra draws.
  np.testing.assert_array_equal(a["image"], plain(5)["image"])
  assert one.global_sizes() == {"image": 8, "label": 8, "reference": 24, "reference_label": 24}
  idx = _indices(a["reference"])
  assert len(set(idx)) == 24                           # within an epoch: no repeats
  np.testing.assert_array_equal(a["reference_label"], idx % 5)
  # Fresh draws every step and for every seed.
  assert not np.array_equal(idx, _indices(one(6)["reference"]))
  other_seed = pipeline.StepBatcher(ds, global_batch_size=8, seed=4, process_slice=(0, 8),
                                    num_reference=24)
  assert not np.array_equal(idx, _indices(other_seed(5)["reference"]))
  # Not the minibatch's index stream: the reference stream is its own permutation.
  ref_only = pipeline.StepBatcher(ds, global_batch_size=24, seed=3, process_slice=(0, 24))
  assert not np.array_equal(idx, _indices(ref_only(0)["image"]))
  # Two processes: each draws its own slice; disjoint, and together the 1-process draw.
  parts = [pipeline.StepBatcher(ds, global_batch_size=8, seed=3, process_slice=s,
                                num_reference=24)(5) for s in ((0, 4), (4, 8))]
  assert [p["reference"].shape[0] for p in parts] == [12, 12]
  got = np.concatenate([_indices(p["reference"]) for p in parts])
  np.testing.assert_array_equal(got, idx)
  assert not set(_indices(parts[0]["reference"])) & set(_indices(parts[1]["reference"]))
  with pytest.raises(ValueError, match="cannot be split across processes"):
    pipeline.StepBatcher(ds, global_batch_size=8, seed=3, process_slice=(0, 4), num_reference=7)


def test_same_class_references_follow_each_row_and_split_like_the_batch():
  """stf.reference_classes='same_class': k = draws / batch references per minibatch row, all
  of the row's class, distinct within a row, pure in (seed, step), sliced per process with
  the process's own rows; a class smaller than k is used whole, repeated."""
  ds = _indexed_dataset()                       # labels = index % 5
  kw = dict(global_batch_size=8, seed=3, num_reference=24, reference_classes="same_class")
  one = pipeline.StepBatcher(ds, process_slice=(0, 8), **kw)
  a = one(5)
  rows = a["label"]
  ref = _indices(a["reference"]).reshape(8, 3)
  np.testing.assert_array_equal(ref % 5, np.repeat(rows[:, None], 3, axis=1))
  np.testing.assert_array_equal(a["reference_label"].reshape(8, 3) % 5, ref % 5)
  assert all(len(set(r)) == 3 for r in ref)
  np.testing.assert_array_equal(_indices(one(5)["reference"]), ref.reshape(-1))   # resumable
  assert not np.array_equal(_indices(one(6)["reference"]), ref.reshape(-1))
  parts = [pipeline.StepBatcher(ds, process_slice=s, **kw)(5) for s in ((0, 4), (4, 8))]
  for p, lo in zip(parts, (0, 4)):
    np.testing.assert_array_equal(_indices(p["reference"]).reshape(4, 3), ref[lo:lo + 4])
  small = pipeline.InMemoryDataset(np.arange(6, dtype=np.float32).reshape(6, 1, 1, 1),
                                   np.array([0, 0, 1, 1, 1, 1]))
  b = pipeline.StepBatcher(small, global_batch_size=2, seed=0, process_slice=(0, 2),
                           num_reference=8, reference_classes="same_class")(0)
  got = b["reference"].reshape(2, 4).astype(int)
  for row, label in zip(got, b["label"]):
    assert set(row) <= set(np.flatnonzero(small.labels == label))
  with pytest.raises(ValueError, match="not a multiple of the batch"):
    pipeline.StepBatcher(ds, process_slice=(0, 8), **dict(kw, num_reference=20))


def test_same_class_config_is_checked():
  from jaxdiff import config as config_lib
  c = config_lib.load_config("cifar10_sct_cond")
  config_lib.validate(c, num_devices=8)                  # 1024 refs, 16 per device
  c.stf.reference_size = 1000
  with pytest.raises(config_lib.ConfigError, match="multiple of the per_device batch 16"):
    config_lib.validate(c, num_devices=8)
  c = config_lib.load_config("cifar10_sct")            # unlabelled
  c.stf.reference_classes = "same_class"
  with pytest.raises(config_lib.ConfigError, match="needs class labels"):
    config_lib.validate(c)
  c.stf.reference_classes = "per_class"
  with pytest.raises(config_lib.ConfigError, match="reference_classes='per_class'"):
    config_lib.validate(c)


def test_reference_flip_is_independent_of_minibatch_flip():
  rng = np.random.default_rng(0)
  ds = pipeline.InMemoryDataset(rng.uniform(-1, 1, (40, 4, 4, 1)).astype(np.float32))
  kw = dict(global_batch_size=8, seed=1, process_slice=(0, 8), num_reference=32)
  flipped = pipeline.StepBatcher(ds, random_flip=True, **kw)(2)
  straight = pipeline.StepBatcher(ds, random_flip=False, **kw)(2)
  same = [np.array_equal(f, s) for f, s in zip(flipped["reference"], straight["reference"])]
  mirrored = [np.array_equal(f, s[:, ::-1]) for f, s in zip(flipped["reference"],
                                                              straight["reference"])]
  assert all(a or b for a, b in zip(same, mirrored))
  assert 4 < sum(mirrored) < 28                      # about half are flipped


def test_toy2d_reference_draws_split_across_processes():
  kw = dict(dataset=None, global_batch_size=8, seed=0, toy2d_distribution="moons",
            num_reference=16)
  whole = pipeline.StepBatcher(process_slice=(0, 8), **kw)(3)["reference"]
  halves = [pipeline.StepBatcher(process_slice=s, **kw)(3)["reference"] for s in ((0, 4), (4, 8))]
  np.testing.assert_array_equal(np.concatenate(halves), whole)
  assert not np.array_equal(whole, pipeline.StepBatcher(process_slice=(0, 8), **kw)(4)["reference"])


# ----------------------------------------------------------------------------- config

@pytest.mark.parametrize("overrides,num_devices,match", [
    (dict(stf__mode="all"), None, r"config\.stf\.mode='all' is not allowed"),
    (dict(stf__reference_size=0), None, r"config\.stf\.reference_size=0 must be an integer"),
    (dict(stf__reference_size=4), 8, r"smaller than the per-device batch 8 .*use at least 8"),
    (dict(stf__mode="global", stf__reference_size=32), 8, r"use at least 64"),
    (dict(stf__mode="global", stf__reference_size=100), 8, r"use 96 or 104"),
])
def test_stf_config_errors_name_key_and_fix(overrides, num_devices, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(toy_stf_config(**overrides), num_devices=num_devices)


def test_recipes_validate_and_count_draws():
  for name in ("digits_stf", "cifar10_stf"):
    for arg in ("", "smoke"):
      config_lib.validate(load_config(name, arg))
  c = load_config("cifar10_stf", "")
  assert (c.stf.reference_size, c.data.batch_size, c.model.model_channels) == (1024, 512, 128)
  assert (c.data.tfds_name, c.objective.name, c.stf.mode) == ("cifar10", "stf", "per_device")
  obj = STFObjective.from_config(c, None, None, None)
  obj.mesh = mesh_of(8)
  # Official: 1024 images per GPU of which the first 64 are the minibatch.
  assert obj.reference_draws == 8 * (1024 - 64)
  c.stf.mode = "global"
  obj = STFObjective.from_config(c, None, None, None)
  obj.mesh = mesh_of(8)
  assert obj.reference_draws == 1024 - 512


# ----------------------------------------------------------------------------- modes on a mesh

def _sharded(mesh, arrays):
  return {k: jax.device_put(v, parallel.batch_sharding(mesh, v.ndim)) for k, v in arrays.items()}


@pytest.mark.parametrize("labels", [False, True])
def test_target_modes_on_eight_devices_match_unsharded_math(labels):
  """The objective's target, jitted on a 4x2 (data, fsdp) mesh like the train step."""
  mesh = mesh_of(8, fsdp=2)
  rng = np.random.default_rng(0)
  b, per_dev_n, shape = 16, 12, (4, 4, 3)
  num_classes = 3 if labels else 0

  def objective(mode, n):
    obj = STFObjective(None, None, num_classes=num_classes, reference_size=n, mode=mode,
                       batch_size=b)
    obj.mesh = mesh
    return obj

  per_device, global_ = objective("per_device", per_dev_n), objective("global", 48)
  for obj in (per_device, global_):
    e = obj.reference_draws
    batch = {"image": rng.uniform(-1, 1, (b,) + shape).astype(np.float32),
             "reference": rng.uniform(-1, 1, (e,) + shape).astype(np.float32)}
    if labels:
      batch["label"] = rng.integers(0, num_classes, b)
      batch["reference_label"] = rng.integers(0, num_classes, e)
    sigma = np.exp(rng.uniform(np.log(0.5), np.log(5.0), b)).astype(np.float32)
    x = (batch["image"] + sigma[:, None, None, None] * rng.standard_normal((b,) + shape)
         ).astype(np.float32)
    fn = jax.jit(lambda x, s, bt: obj.target(x, s, bt, {}, None))
    got = np.asarray(fn(*_sharded(mesh, {"x": x, "s": sigma}).values(), _sharded(mesh, batch)))
    lab = batch.get("label")
    if obj.mode == "global":
      # Unsharded: every sample against the whole global set of 48.
      ref = np.concatenate([batch["image"], batch["reference"]])
      rlab = np.concatenate([lab, batch["reference_label"]]) if labels else None
      want = np.asarray(stf.stf_target(x, sigma, ref, lab, rlab))
    else:
      # Per shard k: its 2 minibatch images + its 10 draws, normalised locally.
      want = np.empty_like(x)
      lb, le = b // 8, e // 8
      for k in range(8):
        q, r = slice(k * lb, (k + 1) * lb), slice(k * le, (k + 1) * le)
        ref = np.concatenate([batch["image"][q], batch["reference"][r]])
        rlab = (np.concatenate([lab[q], batch["reference_label"][r]]) if labels else None)
        want[q] = np.asarray(stf.stf_target(x[q], sigma[q], ref, lab[q] if labels else None, rlab))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    # Not a tautology: the STF target moved well away from the generating images,
    # and the label restriction changed it.
    assert np.abs(got - batch["image"]).mean() > 0.01
    if labels:
      unrestricted = STFObjective(None, None, reference_size=obj.reference_size, mode=obj.mode,
                                  batch_size=b)
      unrestricted.mesh = mesh
      other = jax.jit(lambda x, s, bt: unrestricted.target(x, s, bt, {}, None))(x, sigma, batch)
      assert np.abs(np.asarray(other) - got).max() > 1e-2


def _edm_with_target(target_fn, sigma_data=0.5):
  class Ref(EDMObjective):
    def target(self, x_noisy, sigma, batch, aux, key):
      return target_fn(x_noisy, sigma, batch)
  return Ref


@pytest.mark.parametrize("mode,n", [("global", 128), ("per_device", 24)])
def test_train_step_loss_on_mesh_equals_unsharded(mode, n):
  """One compiled train step on 8 devices: its loss equals the single-device loss with the
  unsharded (global) or per-shard (per_device) STF target, same key and batch."""
  c = toy_stf_config(mode=mode, reference_size=n)
  exp = Experiment(c, mesh=mesh_of(8, fsdp=2))
  state = exp.init_state()
  batch = exp.global_batch(2)
  host_state, host_batch = jax.device_get(state), jax.device_get(batch)
  _, metrics = exp.compiler(None)(state, batch)
  b, e = c.data.batch_size, exp.objective.reference_draws
  assert host_batch["reference"].shape == (e, 2)

  def unsharded(x, sigma, bt):
    if mode == "global":
      return stf.stf_target(x, sigma, jnp.concatenate([bt["image"], bt["reference"]]))
    lb, le = b // 8, e // 8
    return jnp.concatenate([
        stf.stf_target(x[k * lb:(k + 1) * lb], sigma[k * lb:(k + 1) * lb],
                       jnp.concatenate([bt["image"][k * lb:(k + 1) * lb],
                                        bt["reference"][k * le:(k + 1) * le]]))
        for k in range(8)])

  ref_obj = _edm_with_target(unsharded)(exp.apply_fn, exp.objective.noise_sampler)
  key = jax.random.fold_in(jax.random.wrap_key_data(host_state.rng, impl=c.rng_impl), 0)
  want, _ = jax.jit(ref_obj.loss)(host_state.params, host_state.aux, host_batch, key, 0)
  plain, _ = jax.jit(_edm_with_target(lambda x, s, bt: bt["image"])(
      exp.apply_fn, exp.objective.noise_sampler).loss)(host_state.params, {}, host_batch, key, 0)
  np.testing.assert_allclose(float(metrics["loss"]), float(want), rtol=2e-5)
  assert abs(float(want) - float(plain)) > 1e-3 * abs(float(plain))  # STF changed the loss


def test_single_reference_is_exactly_the_edm_step():
  """n = 1 per device (one image per device, no draws): the STF step is EDM's step."""
  c_stf = toy_stf_config(mode="per_device", reference_size=1, batch_size=8)
  c_edm = toy_stf_config(batch_size=8, objective__name="edm")
  results = []
  for c in (c_stf, c_edm):
    exp = Experiment(c, mesh=mesh_of(8))
    state, metrics = exp.compiler(None)(exp.init_state(), exp.global_batch(0))
    results.append((jax.device_get(metrics["loss"]), jax.device_get(state.params)))
  assert exp.objective.reference_draws == 0 or c.objective.name == "edm"
  np.testing.assert_array_equal(results[0][0], results[1][0])
  for a, b in zip(jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1])):
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- end to end

def test_stf_with_curriculum_end_to_end(tmp_path):
  c = toy_stf_config(mode="global", reference_size=128, train__num_steps=6, train__log_every=1)
  c.curriculum.enabled = True
  c.curriculum.pacing = "fixed"
  c.curriculum.num_clusters = 3
  c.curriculum.steps_per_stage = 2
  summary = loop.train(c, str(tmp_path), mesh=mesh_of(4))
  assert summary["step"] == 6
  assert len(summary["compilations"]) == 3             # one per stage, none per step
  assert np.isfinite(summary["final_loss"])


@pytest.mark.parametrize("recipe", ["digits_stf", "cifar10_stf"])
def test_recipe_smoke_end_to_end(tmp_path, recipe):
  c = load_config(recipe, "smoke")
  if recipe == "cifar10_stf":  # generated 8x8 RGB data through the tfds path, no CIFAR-10
    assert c.data.name == "tfds" and c.data.tfds_name != "cifar10"
    c.data.data_dir = str(tmp_path / "data")
  summary = loop.train(c, str(tmp_path / "run"), mesh=mesh_of(2))
  assert summary["step"] == c.train.num_steps and np.isfinite(summary["final_loss"])
  if recipe == "digits_stf":
    assert summary["quality"]["name"] == "digits_fid"
    assert np.isfinite(summary["quality"]["value"])
