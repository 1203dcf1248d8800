"""CT / iCT / ECT / SCT objectives, samplers, init_from and recipes (docs/consistency.md#the-methods-at-a-glance, docs/sct.md; issue 5).

The pure schedules are tested in test_consistency_math.py; here: the loss core
(shared dropout, stop-gradient teacher, r = 0 and r = t limits, the continuous
limit against jax.jvp), SCT's reference-set target (ECT bit for bit with one
reference, an exact Euler step with the whole dataset), traced schedules (no
recompilation), the boundary, samplers, guidance, init_from and the recipes.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import objectives
from jaxdiff.train.experiment import Experiment
from jaxdiff import config as config_lib
from jaxdiff import diffusion, models
from jaxdiff.objectives import base
from jaxdiff.objectives import consistency as cons
from jaxdiff.objectives.consistency import math as cm
from jaxdiff.objectives.consistency import sct
from jaxdiff.train import loop
from jaxdiff.train import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str = "smoke"):
  return config_lib.load_config(f"{name}:{arg}")


def mesh_of(n: int):
  import ml_collections
  from jaxdiff import parallel
  return parallel.make_mesh(ml_collections.ConfigDict({"data": n, "fsdp": 1}),
                            devices=jax.devices()[:n])


def toy_setup(method, dropout=0.0, batch_size=8, hidden=32, dtype=jnp.float32, mask=None,
              **consistency):
  """(objective, params) of a 2-D MLP; no trainer, no mesh."""
  c = load_config("toy2d_edm")
  c.objective.name = method
  c.data.batch_size = batch_size
  c.model.dropout = dropout
  c.model.hidden_dim = hidden
  if method in ("ect", "sct"):
    c.objective.p_mean, c.objective.p_std = -1.1, 2.0
  for key, value in consistency.items():
    if key.startswith("stf_"):
      c.stf[key[4:]] = value
    else:
      c.consistency[key] = value
  model = models.build_model(c.model, image_shape=(2,))
  if dtype != jnp.float32:
    model = model.clone(dtype=dtype)
  apply_fn = base.make_apply_fn(model)
  full = objectives.get(method).noise_sampler(c)
  sampler = base.LognormalSampler(full.p_mean, full.p_std, mask)
  objective = objectives.build(c, apply_fn, (2,), noise_sampler=sampler)
  params = step_lib.init_params(model, jax.random.PRNGKey(3), (2,), 0)
  # A non-trivial network: EDM initialises the output layer near zero.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(4), len(leaves))
  params = jax.tree.unflatten(tree, [(p + 0.3 * jax.random.normal(k, p.shape)).astype(dtype)
                                     for p, k in zip(leaves, keys)])
  return objective, params


def toy_batch(n=8, seed=0, dtype=jnp.float32):
  return {"image": jax.random.normal(jax.random.PRNGKey(100 + seed), (n, 2), dtype)}


# ------------------------------------------------------------------ API and config


def test_reexports_the_public_math():
  assert cons.ect_r is cm.ect_r
  assert cons.ct_schedule is cm.ct_schedule
  assert cons.pseudo_huber is cm.pseudo_huber


def test_registry_and_auto_settings():
  c = load_config("toy2d_edm")
  for method, (precond, smin, metric, weighting) in {
      "ct": ("cm", 0.002, "l2", "uniform"), "ict": ("cm", 0.002, "pseudo_huber", "ict"),
      "ect": ("edm", 0.003, "pseudo_huber", "ect"), "sct": ("edm", 0.003, "pseudo_huber", "ect")
  }.items():
    c.objective.name = method
    config_lib.validate(c)
    s = cons.resolve_settings(c, (32, 32, 3))
    assert (s.train_precond, s.sample_sigma_min, s.metric, s.weighting) == (
        precond, smin, metric, weighting)
  # iCT's c = 0.00054 sqrt(d): 0.0299 on CIFAR-10.
  c.objective.name = "ict"
  assert cons.resolve_settings(c, (32, 32, 3)).huber_c == pytest.approx(0.00054 * np.sqrt(3072))


def test_ct_auto_metric_is_lpips_when_weights_are_given(tmp_path):
  """CT's paper metric is LPIPS; "auto" takes it whenever consistency.lpips_weights is set and
  the L2 stand-in otherwise (jaxdiff never downloads VGG weights)."""
  c = load_config("cifar10_ct")
  assert cons.resolve_settings(c, (32, 32, 3)).metric == "l2"
  weights = tmp_path / "lpips_vgg.npz"
  weights.write_bytes(b"checked when the loss is built")
  c.consistency.lpips_weights = str(weights)
  assert cons.resolve_settings(c, (32, 32, 3)).metric == "lpips"


def test_lpips_needs_weights_and_bad_values_are_named():
  c = load_config("toy2d_edm")
  c.objective.name = "ct"
  c.consistency.metric = "lpips"
  with pytest.raises(config_lib.ConfigError, match=r"lpips_weights=/path"):
    config_lib.validate(c)
  c.consistency.lpips_weights = "/tmp/no_such_dir/vgg.npz"
  with pytest.raises(config_lib.ConfigError, match="does not exist"):
    config_lib.validate(c)
  c.consistency.metric = "auto"     # CT's auto is LPIPS with weights: a missing file still stops
  with pytest.raises(config_lib.ConfigError, match="does not exist"):
    config_lib.validate(c)
  c.consistency.lpips_weights = ""
  c.consistency.weighting = "lognormal"
  with pytest.raises(config_lib.ConfigError, match=r"consistency\.weighting='lognormal'"):
    config_lib.validate(c)
  c.consistency.weighting = "auto"
  c.consistency.phase_edges = (1.0, 0.5)
  with pytest.raises(config_lib.ConfigError, match="phase_edges"):
    config_lib.validate(c)
  c.objective.name = "ect"
  c.consistency.phase_edges = ()
  c.consistency.guidance = "uncond"
  with pytest.raises(config_lib.ConfigError, match="class-conditional"):
    config_lib.validate(c)


# ------------------------------------------------------------------ ECT core


def test_ect_r_follows_the_stage_of_the_traced_step():
  obj, params = toy_setup("ect", stage_steps=10)
  batch = toy_batch()
  traces = []

  @jax.jit
  def times(step):
    traces.append(1)
    t, r, sched = obj.sample_times(jax.random.PRNGKey(0), 64, step, jnp.float32)
    return t, r, sched["stage"]

  for step, stage in [(0, 0), (9, 0), (10, 1), (25, 2), (70, 7)]:
    t, r, got = times(jnp.int32(step))
    assert int(got) == stage
    np.testing.assert_array_equal(np.asarray(r), np.asarray(cm.ect_r(t, stage)))
  assert len(traces) == 1  # one trace for every stage: the stage is a traced value
  # The loss reports the stage and r/t (trainer metrics).
  _, metrics = jax.jit(obj.loss)(params, {}, batch, jax.random.PRNGKey(1), jnp.int32(25))
  assert float(metrics["consistency/stage"]) == 2.0
  assert 0 < float(metrics["consistency/r_over_t"]) < 1


def test_r_equal_t_with_shared_dropout_gives_exactly_zero():
  # q = 1e30: q^-(stage+1) n(t) underflows against 1, so r == t in float32.
  obj, params = toy_setup("ect", dropout=0.5, q=1e30)
  batch = toy_batch(16)
  key = jax.random.PRNGKey(7)
  # Op by op (no jit), student and teacher run the very same kernels: exactly 0.
  out = obj.terms(params, params, batch, key, jnp.int32(0))
  np.testing.assert_array_equal(np.asarray(out["r"]), np.asarray(out["sigma"]))
  np.testing.assert_array_equal(np.asarray(out["x_r"]), np.asarray(out["x_t"]))
  np.testing.assert_array_equal(np.asarray(out["delta"]), 0.0)
  # Inside one jit XLA may fuse the two calls differently (FMA contraction): ulps only.
  jitted = jax.jit(obj.terms)(params, params, batch, key, jnp.int32(0))
  assert float(jnp.max(jnp.abs(jitted["delta"]))) < 1e-5
  other = jax.jit(obj.terms)(params, params, batch, key, jnp.int32(0),
                             teacher_dropout_key=jax.random.PRNGKey(99))
  assert float(jnp.max(jnp.abs(other["delta"]))) > 1e-2  # another dropout mask: not consistent


def test_r_zero_reduces_to_the_denoising_loss():
  obj, params = toy_setup("ect", q=1.0)  # q = 1: r = max(0, t (1 - n)) = 0 for every t
  batch = toy_batch(16)
  out = jax.jit(obj.terms)(params, params, batch, jax.random.PRNGKey(2), jnp.int32(5))
  assert np.all(np.asarray(out["r"]) == 0)
  t = out["sigma"]
  d = diffusion.denoise(obj.apply_fn, params, out["x_t"], t, train=True)
  expected = jnp.linalg.norm(d - batch["image"], axis=-1) / t
  np.testing.assert_allclose(np.asarray(out["per_sample_loss"]), np.asarray(expected), rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(out["target"]), np.asarray(batch["image"]))


def test_finite_difference_matches_jvp_directional_derivative():
  # A smooth float64 network (the MLP's noise embedding computes in float32, which
  # would swamp a float64 finite difference).
  def apply_fn(params, x, c_noise, class_labels=None, augment_labels=None, train=False,
               dropout_key=None):
    h = jnp.tanh(x @ params["w1"] + c_noise[:, None] * params["wt"] + params["b1"])
    return h @ params["w2"]

  with jax.enable_x64(True):
    c = load_config("toy2d_edm")
    c.objective.name = "ect"
    obj = objectives.build(c, apply_fn, (2,), noise_sampler=base.LognormalSampler())
    k = jax.random.split(jax.random.PRNGKey(0), 6)
    params = {"w1": jax.random.normal(k[0], (2, 16), jnp.float64),
              "wt": jax.random.normal(k[1], (16,), jnp.float64),
              "b1": jax.random.normal(k[2], (16,), jnp.float64),
              "w2": jax.random.normal(k[3], (16, 2), jnp.float64)}
    x0 = jax.random.normal(k[4], (6, 2), jnp.float64)
    eps = jax.random.normal(k[5], (6, 2), jnp.float64)
    t = jnp.array([0.05, 0.3, 0.9, 2.0, 7.0, 30.0], jnp.float64)

    def along_path(s):  # s -> f(x0 + s eps, s): ECT's continuous-time limit differentiates this
      return obj.training_fn(params, x0 + s[:, None] * eps, s, train=False)

    _, jvp = jax.jvp(along_path, (t,), (jnp.ones_like(t),))
    errors = []
    for rel_dt in (1e-3, 1e-4):
      r = t * (1 - rel_dt)
      fd = (along_path(t) - along_path(r)) / (t - r)[:, None]
      errors.append(float(jnp.max(jnp.abs(fd - jvp) / (jnp.abs(jvp) + 1e-3))))
    assert errors[1] < 5e-3
    # First order in dt: a ten times smaller step gives a ten times smaller error.
    assert 5 < errors[0] / errors[1] < 20


@pytest.mark.parametrize("method", ["ect", "ct"])
def test_no_gradient_flows_through_the_teacher(method):
  obj, params = toy_setup(method, dropout=0.2, stf_reference_size=8)
  batch = toy_batch(8)
  key, step = jax.random.PRNGKey(5), jnp.int32(3)

  def loss_of(student, teacher):
    return jnp.mean(obj.terms(student, teacher, batch, key, step)["per_sample_loss"])

  g_teacher = jax.jit(jax.grad(loss_of, argnums=1))(params, params)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(g_teacher))
  # The training loss's gradient equals the gradient with the teacher as a constant copy.
  frozen = jax.tree.map(lambda p: jnp.asarray(np.asarray(p)), params)
  g_loss = jax.jit(jax.grad(lambda p: obj.loss(p, obj.init_aux(p), batch, key, step)[0]))(params)
  g_const = jax.jit(jax.grad(loss_of))(params, frozen)
  for a, b in zip(jax.tree.leaves(g_loss), jax.tree.leaves(g_const)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(g_loss))


@pytest.mark.parametrize("method,sigma_min", [("ect", 0.003), ("ct", 0.002), ("ict", 0.002)])
def test_boundary_is_the_identity_bit_exactly(method, sigma_min):
  obj, params = toy_setup(method)
  x = jax.random.normal(jax.random.PRNGKey(0), (32, 2)) * 3
  f = obj.consistency_fn(params)
  out = f(x, jnp.full((32,), sigma_min, jnp.float32))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
  # ... and not away from it.
  assert float(jnp.max(jnp.abs(f(x, jnp.full((32,), 0.5)) - x))) > 1e-3


# ------------------------------------------------------------------ SCT


def test_sct_with_a_one_element_reference_set_equals_ect_bit_for_bit():
  # One sample per step and reference_size 1: the reference set is the sample itself.
  ect, params = toy_setup("ect", dropout=0.3, batch_size=1, stage_steps=2)
  sct, _ = toy_setup("sct", dropout=0.3, batch_size=1, stage_steps=2, stf_reference_size=1)
  assert sct.reference_draws == 0
  ect_terms, sct_terms = jax.jit(ect.terms), jax.jit(sct.terms)
  ect_grad = jax.jit(jax.grad(lambda p, b, k, s: ect.loss(p, {}, b, k, s)[0]))
  sct_grad = jax.jit(jax.grad(lambda p, b, k, s: sct.loss(p, {}, b, k, s)[0]))
  for seed, step in [(0, 0), (1, 3), (2, 9)]:
    batch = toy_batch(1, seed)
    key = jax.random.PRNGKey(seed)
    a = ect_terms(params, params, batch, key, jnp.int32(step))
    b = sct_terms(params, params, batch, key, jnp.int32(step))
    for name in ("x_r", "target", "per_sample_loss"):
      np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)
    ga = ect_grad(params, batch, key, jnp.int32(step))
    gb = sct_grad(params, batch, key, jnp.int32(step))
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _posterior_mean(x, t, data):
  """E[y | x] of the empirical distribution of `data` at noise t (float64 numpy)."""
  logits = -np.sum((x[:, None, :] - data[None]) ** 2, -1) / (2 * t[:, None] ** 2)
  w = np.exp(logits - logits.max(1, keepdims=True))
  w /= w.sum(1, keepdims=True)
  return w @ data


def test_sct_with_the_whole_dataset_as_reference_is_an_exact_euler_step():
  data = np.array([[-1.0, -1.0], [1.0, -0.5], [0.2, 1.0], [0.9, 0.9], [-0.6, 0.4]], np.float32)
  sct, params = toy_setup("sct", batch_size=1, stf_reference_size=5, stage_steps=1)
  ect, _ = toy_setup("ect", batch_size=1, stage_steps=1)
  assert sct.reference_draws == 4
  # The sample is data[0]; the draws are the other four: the reference set is the dataset.
  batch = {"image": jnp.asarray(data[:1]), "reference": jnp.asarray(data[1:])}
  checked = 0
  sct_terms, ect_terms = jax.jit(sct.terms), jax.jit(ect.terms)
  for seed in range(12):
    out = sct_terms(params, params, batch, jax.random.PRNGKey(seed), jnp.int32(1))
    t, r = np.float64(out["sigma"]), np.float64(out["r"])
    if r[0] <= 0:
      continue
    x_t = np.float64(out["x_t"])
    d = _posterior_mean(x_t, t, data.astype(np.float64))
    euler = d + (r / t)[:, None] * (x_t - d)  # one Euler step of the PF-ODE from t to r
    np.testing.assert_allclose(np.float64(out["x_r"]), euler, rtol=2e-5, atol=2e-5)
    e = ect_terms(params, params, batch, jax.random.PRNGKey(seed), jnp.int32(1))
    if 0.3 < t[0] < 3:  # where the posterior is not one-hot, ECT's point is a different one
      assert np.max(np.abs(np.float64(e["x_r"]) - euler)) > 1e-3
    checked += 1
  assert checked >= 6


def test_sct_same_class_restriction():
  c_data = np.array([[-1.0, -1.0], [1.0, 1.0], [1.2, 0.8], [-0.8, -1.2]], np.float32)
  labels = np.array([0, 1, 1, 0])
  c = load_config("toy2d_edm")
  c.objective.name = "sct"
  c.data.batch_size, c.data.num_classes = 1, 2
  c.stf.reference_size = 4
  model = models.build_model(c.model, image_shape=(2,), num_classes=2)
  obj = objectives.build(c, base.make_apply_fn(model), (2,),
                         noise_sampler=base.LognormalSampler(-1.1, 2.0))
  batch = {"image": jnp.asarray(c_data[:1]), "label": jnp.asarray(labels[:1]),
           "reference": jnp.asarray(c_data[1:]), "reference_label": jnp.asarray(labels[1:])}
  x_t, t = jnp.asarray([[0.0, 0.0]]), jnp.asarray([5.0])
  got = np.asarray(obj.x0_hat(x_t, t, batch))
  same = c_data[labels == 0]
  np.testing.assert_allclose(got, _posterior_mean(np.zeros((1, 2)), np.array([5.0]), same),
                             rtol=1e-5)


def test_phased_sct_keeps_the_teacher_in_the_students_phase():
  edges = (0.5, 4.0)
  obj, params = toy_setup("sct", batch_size=64, stf_reference_size=64, phase_edges=edges,
                          stage_steps=1)
  out = jax.jit(obj.terms)(params, params, toy_batch(64), jax.random.PRNGKey(0), jnp.int32(0))
  t, r = np.asarray(out["sigma"]), np.asarray(out["r"])
  lower = np.asarray(sct.phase_lower_edge(out["sigma"], edges))
  np.testing.assert_array_equal(lower, np.where(t > 4.0, 4.0, np.where(t > 0.5, 0.5, 0.0)))
  assert np.all(r >= lower) and np.all(r < t)
  at_edge = (r == lower) & (lower > 0)
  assert at_edge.any()  # stage 0 pulls many r below the edge: clipped to it
  # There the target is the ODE point at the edge itself, x0_hat + s eps_hat.
  np.testing.assert_array_equal(np.asarray(out["target"])[at_edge], np.asarray(out["x_r"])[at_edge])


def test_phased_sampler_with_eta_zero_is_edge_to_edge():
  obj, params = toy_setup("sct", stf_reference_size=8, phase_edges=(0.5, 4.0))
  latents = jax.random.normal(jax.random.PRNGKey(0), (16, 2))
  f = obj.phase_fn(params)
  got = sct.phased_sampler(f, latents, (0.5, 4.0), 80.0, eta=0.0)
  full = lambda v: jnp.full((16,), v, jnp.float32)
  x = obj.training_fn(params, latents * 80.0, full(80.0), edge=full(4.0), train=False)
  x = obj.training_fn(params, x, full(4.0), edge=full(0.5), train=False)
  x = obj.consistency_fn(params)(x, full(0.5))
  np.testing.assert_allclose(np.asarray(got), np.asarray(x), rtol=1e-6, atol=1e-6)
  skipped = sct.phased_sampler(f, latents, (0.5, 4.0), 80.0, eta=0.3)
  assert float(jnp.max(jnp.abs(skipped - got))) > 1e-4


def test_guidance_by_an_ema_snapshot():
  obj, params = toy_setup("ect", guidance="ema_snapshot", guidance_scale=2.0,
                          guidance_snapshot_fraction=0.25)
  obj.ema_config.kind, obj.ema_config.decay = "constant", 0.5
  snapshot = obj.settings.snapshot_step  # 0.25 of train.num_steps (8) = 2
  assert snapshot == 2
  aux, ema = obj.init_aux(params), params
  update = jax.jit(obj.update_aux)
  for step in range(5):
    new = jax.tree.map(lambda p: p + 0.1 * (step + 1), params)
    aux = update(aux, new, jnp.int32(step))
    if step < snapshot:
      ema = jax.tree.map(lambda e, p: e * 0.5 + p * 0.5, ema, new)
  for a, b in zip(jax.tree.leaves(aux["guide"]), jax.tree.leaves(ema)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
  guided = obj.sampling_params(params, aux)
  x, t = jax.random.normal(jax.random.PRNGKey(1), (4, 2)), jnp.full((4,), 2.0)
  g = obj.guided_fn(guided, obj.consistency_fn, None)(x, t)
  good, bad = obj.consistency_fn(params)(x, t), obj.consistency_fn(aux["guide"])(x, t)
  np.testing.assert_allclose(np.asarray(g), np.asarray(bad + 2.0 * (good - bad)), rtol=1e-5)


# ------------------------------------------------------------------ CT / iCT


def test_ct_pairs_are_adjacent_on_the_grid_of_n_k_and_the_teacher_is_an_ema():
  obj, params = toy_setup("ct", schedule_steps=1000)
  for step in (0, 400, 1000):
    n, mu = cm.ct_schedule(step, 1000)
    t, r, sched = jax.jit(lambda s: obj.sample_times(jax.random.PRNGKey(1), 256, s,
                                                     jnp.float32))(jnp.int32(step))
    assert int(sched["num_scales"]) == n
    i_t = np.asarray(cm.karras_index_of(t, n))
    i_r = np.asarray(cm.karras_index_of(r, n))
    np.testing.assert_allclose(i_t - i_r, 1.0, atol=2e-3)
    assert np.all(np.abs(i_r - np.round(i_r)) < 2e-3) and i_t.max() <= n - 1 + 1e-3
  aux = obj.init_aux(params)
  new = jax.tree.map(lambda p: p + 1.0, params)
  updated = obj.update_aux(aux, new, jnp.int32(400))
  _, mu = cm.ct_schedule(400, 1000)
  for a, p, q in zip(*(jax.tree.leaves(x) for x in (updated["teacher"], params, new))):
    np.testing.assert_allclose(np.asarray(a), mu * np.asarray(p) + (1 - mu) * np.asarray(q),
                               rtol=1e-5, atol=1e-6)


def test_ict_doubling_grid_weight_and_metric():
  obj, params = toy_setup("ict", schedule_steps=800, ict_s0=10, ict_s1=80)
  out = jax.jit(obj.terms)(params, params, toy_batch(64), jax.random.PRNGKey(0), jnp.int32(500))
  n = cm.ict_num_scales(500, 800, 10, 80)
  assert n == 41
  grid = np.asarray(cm.karras_grid_ascending(n))
  t, r = np.asarray(out["sigma"]), np.asarray(out["r"])
  idx = np.searchsorted(grid, t * (1 - 1e-6))
  np.testing.assert_allclose(grid[idx - 1], r, rtol=1e-5)
  c = 0.00054 * np.sqrt(2)
  d = np.linalg.norm(np.asarray(out["delta"]), axis=-1)
  np.testing.assert_allclose(np.asarray(out["per_sample_loss"]),
                             (np.sqrt(d ** 2 + c ** 2) - c) / (t - r), rtol=2e-4)


def test_ict_uses_its_own_noise_distribution():
  """objective.name=ict draws pairs from iCT's lognormal(-1.1, 2.0), never EDM's silently."""
  c = load_config("toy2d_edm")
  c.objective.name = "ict"
  config_lib.validate(c)
  sampler = objectives.get("ict").noise_sampler(c)
  assert (sampler.p_mean, sampler.p_std) == (-1.1, 2.0)
  c.consistency.ict_p_mean, c.consistency.ict_p_std = -1.0, 1.5
  sampler = objectives.get("ict").noise_sampler(c)
  assert (sampler.p_mean, sampler.p_std) == (-1.0, 1.5)
  c.objective.p_mean = -1.1
  with pytest.raises(config_lib.ConfigError, match=r"consistency.ict_p_mean/ict_p_std"):
    config_lib.validate(c)


def test_curriculum_restricts_the_noise_levels():
  from jaxdiff.curriculum import clusters
  mask = (False, False, False, True)  # only the highest-noise quarter
  edges = np.asarray(clusters.cluster_edges(4, "lognormal", -1.1, 2.0))
  for method in ("ect", "ict"):
    obj, _ = toy_setup(method, mask=mask, schedule_steps=10)
    t, _, _ = obj.sample_times(jax.random.PRNGKey(0), 512, jnp.int32(9), jnp.float32)
    assert np.all(np.asarray(t) >= edges[-1] * (1 - 1e-6)), method


# ------------------------------------------------------------------ end to end


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_ct_from_random_weights_learns_the_toy_mixture(tmp_path):
  """The whole CT path (grid pairs, CM boundary, teacher in aux, 1-step sampler) learns.

  With a short teacher EMA (mu0 = 1e-6: mu(k) <= 0.83; iCT drops it) CT reaches the 8
  modes in 800 steps; collapsing to the data mean, as a broken teacher or boundary
  would, scores 0.69 (experiments/ct_toy). The official EMA teacher is the same
  code path with a larger mu, only slower (same experiment: 0.12 after 30k steps).
  """
  c = load_config("toy2d_edm", "")
  c.objective.name = "ct"
  c.sample.kind = "consistency"
  c.consistency.ct_mu0 = 1e-6
  c.model.hidden_dim, c.model.num_layers = 64, 2
  c.data.batch_size = 128
  c.train.num_steps, c.train.log_every, c.train.ckpt_every = 800, 400, 800
  c.eval.num_samples = 1024
  summary = loop.train(c, str(tmp_path), mesh=mesh_of(1))
  assert summary["quality"]["name"] == "sliced_w2"
  assert summary["quality"]["value"] < 0.3, summary["quality"]


def test_cifar10_ect_smoke_runs_one_compilation_over_three_stages(tmp_path):
  c = load_config("cifar10_ect")
  assert c.data.name == "toy2d"  # the smoke variant needs no dataset
  summary = loop.train(c, str(tmp_path), mesh=mesh_of(2))
  assert summary["step"] == c.train.num_steps
  assert np.isfinite(summary["quality"]["value"])
  # pretrain (EDM) ran first; the ECT run itself compiled its step once.
  assert os.path.exists(tmp_path / "pretrain" / "summary.json")
  assert len(summary["compilations"]) == 1
  stages = sorted({m["consistency/stage"] for m in _metrics(tmp_path) if "consistency/stage" in m})
  assert stages == [0.0, 1.0, 2.0]


def test_init_from_copies_ema_weights_and_rejects_another_architecture(tmp_path):
  c = load_config("imagenet64_ect")
  src = tmp_path / "edm"
  c.consistency.pretrain_steps = 4
  pre = objectives.get(c.objective.name).pretrain_config(c)  # a 4-step EDM run of the same model: the source
  c.consistency.pretrain_steps = 0
  loop.train(pre, str(src), mesh=mesh_of(1))
  # Exactly the source's EMA weights in params and ema_params.
  exp = Experiment(c, mesh=mesh_of(1))
  from jaxdiff import checkpoint
  ck = checkpoint.Checkpointer(os.path.join(src, "checkpoints"))
  source = Experiment(pre, mesh=mesh_of(1))
  src_state, _, _ = ck.restore_latest(source.abstract_state)
  ck.close()
  state = loop.load_init_from(exp, exp.init_state(), str(src))
  for a, b, e in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.ema_params),
                     jax.tree.leaves(src_state.ema_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e))
    np.testing.assert_array_equal(np.asarray(b), np.asarray(e))
  c.init_from = str(src)
  summary = loop.train(c, str(tmp_path / "ect"), mesh=mesh_of(1))
  assert np.isfinite(summary["final_loss"])
  assert not os.path.exists(tmp_path / "ect" / "pretrain")
  wide = load_config("imagenet64_ect")
  wide.model.hidden_dim = 2 * c.model.hidden_dim
  wide.init_from = str(src)
  with pytest.raises(config_lib.ConfigError, match=r"model\.hidden_dim"):
    loop.train(wide, str(tmp_path / "wide"), mesh=mesh_of(1))
  missing = load_config("imagenet64_ect")
  missing.init_from = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="init_from"):
    loop.train(missing, str(tmp_path / "missing"), mesh=mesh_of(1))


def test_cifar10_sct_smoke(tmp_path):
  c = load_config("cifar10_sct")
  assert c.data.name == "toy2d" and c.objective.name == "sct"
  summary = loop.train(c, str(tmp_path), mesh=mesh_of(2))
  assert np.isfinite(summary["final_loss"]) and np.isfinite(summary["quality"]["value"])


@pytest.fixture(scope="module")
def digits_ect_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("digits_ect")
  summary = loop.train(load_config("digits_ect"), str(workdir), mesh=mesh_of(2))
  return workdir, summary


def test_digits_ect_smoke_pretrains_then_tunes(digits_ect_run):
  workdir, summary = digits_ect_run
  assert summary["step"] == 6 and np.isfinite(summary["quality"]["value"])
  assert summary["quality"]["name"] == "digits_fid"
  with open(workdir / "pretrain" / "summary.json") as f:
    assert json.load(f)["step"] == 4
  assert len(summary["compilations"]) == 1  # 3 stages, one compiled step


@pytest.mark.slow  # a second digits UNet compile; SCT runs end to end on toy data by default
def test_digits_sct_smoke_from_the_ect_pretraining(digits_ect_run, tmp_path):
  workdir, _ = digits_ect_run
  c = load_config("digits_sct")
  c.init_from = str(workdir / "pretrain")
  c.sample.consistency_sigmas = (80.0, 0.821)  # two-step sampling
  summary = loop.train(c, str(tmp_path), mesh=mesh_of(2))
  assert summary["step"] == c.train.num_steps and np.isfinite(summary["quality"]["value"])
  samples = np.load(summary["samples_npz"])["samples"]
  assert samples.shape == (c.eval.num_samples, 8, 8, 1) and np.all(np.isfinite(samples))
