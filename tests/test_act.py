"""ACT: objective, discriminator, R1, adaptive augmentation and the trainer (docs/act.md#testable-properties; issue 6).

The pure schedules (N(k), mu(k), w(t_j), the ADA rule) are tested in
test_act_math.py. Here: the generator loss against a hand-assembled CT loss
(lambda = 0) and the discriminator's place in its gradient, the index sampler,
R1 (zero off-interval, gradient against finite differences), ADA through the
discriminator step, the augmentation (identity at p = 0, differentiable), the
discriminator network, config errors, and a smoke run: two compiled variants,
the discriminator state in the checkpoint, samples from the mu(k) teacher.
"""
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.train import samples
from jaxdiff.train.experiment import Experiment
from jaxdiff import checkpoint as ckpt_lib
from jaxdiff import config as config_lib
from jaxdiff import diffusion
from jaxdiff.models import discriminator as disc_lib
from jaxdiff.objectives.act import augment as act_augment
from jaxdiff.objectives.act import objective as act
from jaxdiff.objectives.consistency.math import karras_grid_ascending, pseudo_huber
from jaxdiff.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name="digits_act", arg="smoke"):
  return config_lib.load_config(f"{name}:{arg}")


@pytest.fixture(scope="module")
def setup():
  """(experiment, state, batch) of the digits smoke recipe on the 8 simulated devices."""
  exp = Experiment(load_config())
  return exp, exp.init_state(), exp.global_batch(0)


_D_STEPS = {}


def d_step(obj, variant):
  """The objective's discriminator step, jitted once per (objective, variant) for the module."""
  key = (id(obj), variant)
  if key not in _D_STEPS:
    _D_STEPS[key] = jax.jit(lambda aux, params, batch, k, step: obj.after_update(
        aux, params, batch, k, step, variant))
  return _D_STEPS[key]


def objective_with(exp, **act_overrides):
  c = exp.config.copy_and_resolve_references()
  for k, v in act_overrides.items():
    c.act[k] = v
  obj = act.ACTObjective.from_config(c, exp.apply_fn, exp.example_shape,
                                     exp.objective.noise_sampler)
  obj.mesh = exp.mesh
  return obj


# ------------------------------------------------------------------ generator loss

def test_lambda_zero_is_the_ct_loss_and_ignores_the_discriminator(setup):
  exp, state, batch = setup
  obj = objective_with(exp, lam0=0.0)
  key, step = jax.random.key(7), jnp.asarray(3)

  def loss_and_grad(objective):
    return jax.jit(lambda aux: jax.value_and_grad(
        lambda p: objective.loss(p, aux, batch, key, step), has_aux=True)(state.params))

  ct_step = loss_and_grad(obj)
  (loss, metrics), grads = ct_step(state.aux)

  # The CT loss assembled by hand from the same draws: student at t_j, EMA teacher at
  # t_{j-1} with the same noise, CM coefficients, raw sigma into the network, the teacher
  # clipped to [-1, 1], pseudo-Huber with iCT's c, uniform weight.
  k_time, k_noise, k_drop, _ = jax.random.split(key, 4)
  x0 = batch["image"]
  t, r, _ = obj.sample_times(k_time, x0.shape[0], step, x0.dtype)
  eps = jax.random.normal(k_noise, x0.shape, x0.dtype)
  f = lambda p, x, s: diffusion.denoise(exp.apply_fn, p, x, s, precond="cm", sigma_min=0.002,
                                        noise_label="sigma", train=True, dropout_key=k_drop)
  student = f(state.params, x0 + t[:, None, None, None] * eps, t)
  teacher = jnp.clip(f(state.aux["teacher"], x0 + r[:, None, None, None] * eps, r), -1, 1)
  c = 0.00054 * np.sqrt(64)
  expected = jnp.mean(pseudo_huber(student - teacher, c))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["act/consistency"], expected, rtol=1e-5)

  # No discriminator in the generator's gradient at lambda = 0 ...
  other_disc = jax.tree.map(lambda d: d + 1.0, state.aux["disc"])
  chex.assert_trees_all_equal(grads, ct_step(dict(state.aux, disc=other_disc))[1])
  # The discriminator step changes nothing but the teacher at lambda = 0 (its loss is 0).
  aux, _ = d_step(obj, True)(state.aux, state.params, batch, key, step)
  chex.assert_trees_all_equal((aux["disc"], aux["disc_opt"], aux["p"]),
                              (state.aux["disc"], state.aux["disc_opt"], state.aux["p"]))
  # ... and it is there at lambda > 0 (the check above is not vacuous).
  gan_step = loss_and_grad(objective_with(exp, lam0=0.3))
  g1, g2 = gan_step(state.aux)[1], gan_step(dict(state.aux, disc=other_disc))[1]
  assert not all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), g1, g2)))


def test_generator_loss_is_the_official_lerp():
  ct, adv = jnp.array([1.0, 2.0]), jnp.array([5.0, -1.0])
  np.testing.assert_allclose(act.generator_loss(ct, adv, 0.3), 0.7 * ct + 0.3 * adv, rtol=1e-6)
  np.testing.assert_array_equal(act.generator_loss(ct, adv, 0.0), ct)


def test_student_index_is_never_zero_and_teacher_is_one_step_below(setup):
  exp, _, _ = setup
  obj = exp.objective
  for num_bins in (2, 3, 17, 150):
    j, t, r = obj.sample_index(jax.random.key(num_bins), 4096, jnp.asarray(num_bins),
                               jnp.float32)
    grid = karras_grid_ascending(num_bins, 0.002, 80.0, 7.0)
    assert int(j.min()) >= 1 and int(j.max()) <= num_bins - 1
    np.testing.assert_array_equal(t, grid[j])
    np.testing.assert_array_equal(r, grid[j - 1])
    # uniform over 1..N-1
    counts = np.bincount(np.asarray(j), minlength=num_bins)[1:]
    assert counts.min() > 0.5 * 4096 / (num_bins - 1) or num_bins == 150
  j, t, r = obj.sample_index(jax.random.key(0), 8, jnp.asarray(2), jnp.float32)
  np.testing.assert_allclose(t, 80.0, rtol=1e-6)
  np.testing.assert_allclose(r, 0.002, rtol=1e-5)


def test_gan_weight_constant_for_cifar_and_power_law_for_imagenet(setup):
  exp, _, _ = setup
  cifar = objective_with(exp, lam0=0.3, w_mid=0.0)
  np.testing.assert_array_equal(cifar.gan_weight(jnp.arange(1, 5), 5), 1.0)
  imnet = objective_with(exp, lam0=0.6, w_mid=0.2)
  w = imnet.gan_weight(jnp.array([100, 199]), 200)
  np.testing.assert_allclose(0.6 * w[1], 0.6, rtol=1e-6)
  np.testing.assert_allclose(0.6 * imnet.gan_weight(jnp.array([5.0]), 11), 0.2, rtol=1e-5)


# ------------------------------------------------------------------ discriminator step, R1, ADA

def test_r1_only_on_interval_steps_and_its_gradient_matches_finite_differences(setup):
  exp, state, batch = setup
  obj = exp.objective
  assert obj.step_variants == (False, True)
  assert [obj.variant_for_step(s) for s in range(9)] == [s % 4 == 0 for s in range(9)]
  key = jax.random.key(1)
  aux0, m0 = d_step(obj, False)(state.aux, state.params, batch, key, jnp.asarray(1))
  aux1, m1 = d_step(obj, True)(state.aux, state.params, batch, key, jnp.asarray(4))
  assert float(m1["act/r1"]) > 0.0 and float(aux1["r1_last"]) == float(m1["act/r1"])
  # Off-interval steps compute no R1: they report the latest one (none yet: 0).
  assert float(m0["act/r1"]) == float(state.aux["r1_last"]) == 0.0
  assert float(aux0["r1_last"]) == 0.0
  # Off-interval steps leave the ADA state alone.
  assert float(aux0["p"]) == float(state.aux["p"])
  assert float(aux0["r1_ema"]) == float(state.aux["r1_ema"])

  # R1 as a function of the discriminator's parameters: gradient vs central differences.
  real = batch["reference"][:8]
  t = jnp.linspace(0.01, 10.0, 8)

  @jax.jit
  def r1(dparams):
    logits, pullback = jax.vjp(lambda x: obj.discriminate(dparams, x, t), real)
    return act.r1_penalty(pullback(jnp.ones_like(logits))[0], jnp.ones(8), 10.0)

  params = state.aux["disc"]
  grad = jax.jit(jax.grad(r1))(params)
  direction = jax.tree.map(lambda p, k: jax.random.normal(k, p.shape),
                           params, _key_tree(params, jax.random.key(2)))
  analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad),
                                                jax.tree.leaves(direction)))
  eps = 1e-3
  shifted = lambda s: jax.tree.map(lambda p, d: p + s * eps * d, params, direction)
  numeric = (r1(shifted(1.0)) - r1(shifted(-1.0))) / (2 * eps)
  np.testing.assert_allclose(analytic, numeric, rtol=3e-2)


def _key_tree(tree, key):
  leaves, treedef = jax.tree.flatten(tree)
  return jax.tree.unflatten(treedef, list(jax.random.split(key, len(leaves))))


def test_ada_moves_p_on_r1_steps_rises_saturates_and_stays_zero_below(setup):
  exp, state, batch = setup
  obj = exp.objective  # threshold 1e4, length 5e5, interval 4, batch 16
  step_fn = d_step(obj, True)  # the R1 variant (compiled once for this module)
  delta = 2 * 16 * 4 / 500000.0
  key, step = jax.random.key(1), jnp.asarray(4)

  def ada(p, r1_ema):
    aux = dict(state.aux, p=jnp.asarray(p, jnp.float32), r1_ema=jnp.asarray(r1_ema, jnp.float32))
    new, metrics = step_fn(aux, state.params, batch, key, step)
    r1 = float(metrics["act/r1"])
    np.testing.assert_allclose(new["r1_ema"], 0.93 * r1_ema + 0.07 * r1, rtol=1e-6)
    return float(new["p"])

  np.testing.assert_allclose(ada(0.0, 1e6), delta, rtol=1e-5)       # R1 EMA above: p rises
  np.testing.assert_allclose(ada(0.5, 1e6), 0.5 + delta, rtol=1e-5)
  assert ada(1.0 - delta / 2, 1e6) == 1.0                               # and saturates at 1
  assert ada(0.0, 1e4) == 0.0                                           # below: stays at 0
  np.testing.assert_allclose(ada(0.5, 1e4), 0.5 - delta, rtol=1e-5)


def test_discriminator_step_moves_only_the_discriminator_and_the_teacher(setup):
  exp, state, batch = setup
  obj = exp.objective
  step_fn = d_step(obj, False)
  aux, metrics = step_fn(state.aux, state.params, batch, jax.random.key(3), jnp.asarray(1))
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), aux["disc"], state.aux["disc"])
  assert any(jax.tree.leaves(changed))
  assert int(metrics["act/d_nonfinite"]) == 0
  # teacher <- mu teacher + (1 - mu) params with mu(k) of the step
  mu = float(obj.schedule(jnp.asarray(1), 1.0)["target_ema"])  # mu(k) after the iteration
  np.testing.assert_allclose(mu, act.act_schedule(2 / 5, 2, 150, 0.9)[1], rtol=1e-6)
  moved = jax.tree.map(lambda p: p + 1.0, state.params)
  aux2, _ = step_fn(state.aux, moved, batch, jax.random.key(3), jnp.asarray(1))
  jax.tree.map(lambda new, old, p: np.testing.assert_allclose(new, mu * old + (1 - mu) * p,
                                                              rtol=1e-5, atol=1e-6),
               aux2["teacher"], state.aux["teacher"], moved)


# ------------------------------------------------------------------ augmentation

@pytest.mark.parametrize("ops", [("ada_bgc",), act_augment.OPERATIONS], ids=["bgc", "all"])
def test_augment_is_identity_at_p_zero_and_differentiable(ops):
  """The official "bgc" pipeline (the default) and jaxdiff's subset after it: p = 0 is the
  identity bit for bit, p traced (ACT's adaptive p) works, gradients reach the images."""
  x = jax.random.normal(jax.random.key(0), (16, 8, 8, 3))
  np.testing.assert_array_equal(act_augment.augment(jax.random.key(1), x, 0.0, ops), x)
  y = jax.jit(lambda p: act_augment.augment(jax.random.key(1), x, p, ops))(1.0)
  assert y.shape == x.shape and not np.array_equal(y, x)
  weights = jax.random.normal(jax.random.key(2), x.shape)
  grad = jax.grad(lambda v: jnp.sum(act_augment.augment(jax.random.key(1), v, 0.7, ops)
                                    * weights))(x)
  assert np.all(np.isfinite(grad)) and float(jnp.abs(grad).sum()) > 0


@pytest.mark.parametrize("op", ["xflip", "rotate90", "translate"])
def test_geometric_ops_move_pixels_without_changing_them(op):
  x = jnp.arange(4 * 8 * 8 * 1, dtype=jnp.float32).reshape(4, 8, 8, 1)
  y = act_augment.augment(jax.random.key(5), x, 1.0, operations=(op,))
  for a, b in zip(np.asarray(x), np.asarray(y)):
    assert set(b.ravel()) <= set(a.ravel())
  if op in ("xflip", "rotate90"):  # permutations
    np.testing.assert_array_equal(np.sort(np.asarray(y).reshape(4, -1)),
                                  np.sort(np.asarray(x).reshape(4, -1)))


def test_color_ops_and_cutout():
  x = jax.random.uniform(jax.random.key(0), (8, 8, 8, 3), minval=-1, maxval=1)
  b = act_augment.augment(jax.random.key(1), x, 1.0, operations=("brightness",))
  shift = np.asarray(b - x).reshape(8, -1)
  np.testing.assert_allclose(shift, shift[:, :1] * np.ones_like(shift), atol=1e-6)
  s = act_augment.augment(jax.random.key(1), x, 1.0, operations=("saturation",))
  np.testing.assert_allclose(s.mean(-1), x.mean(-1), atol=1e-5)  # luma preserved
  g = jnp.repeat(x[..., :1], 1, axis=-1)
  np.testing.assert_array_equal(act_augment.augment(jax.random.key(1), g, 1.0,
                                                    operations=("saturation",)), g)
  cut = act_augment.augment(jax.random.key(1), x, 1.0, operations=("cutout",))
  zeros = np.asarray(jnp.all(cut == 0, axis=-1)).reshape(8, -1).sum(1)
  assert np.all(zeros >= 4) and np.all(zeros <= 16)  # half-side square, clipped at borders
  with pytest.raises(ValueError, match="unknown augmentation"):
    act_augment.augment(jax.random.key(1), x, 1.0, operations=("hue",))


# ------------------------------------------------------------------ discriminator network

def test_discriminator_shapes_labels_and_logical_axes():
  d = disc_lib.TimeConditionedDiscriminator(model_channels=16, channel_mult=(1, 2),
                                            num_blocks=1, attn_resolutions=(4,), label_dim=10)
  x = jax.random.normal(jax.random.key(0), (3, 8, 8, 3))
  t = jnp.array([0.01, 1.0, 80.0])
  variables = d.init(jax.random.key(1), x, t, jnp.zeros((3, 10)))
  out = d.apply(variables, x, t, jax.nn.one_hot(jnp.array([0, 1, 2]), 10))
  assert out.shape == (3,)
  other = d.apply(variables, x, t, jax.nn.one_hot(jnp.array([3, 4, 5]), 10))
  assert not np.allclose(out, other)  # class-conditional
  later = d.apply(variables, x, t * 2, jax.nn.one_hot(jnp.array([0, 1, 2]), 10))
  assert not np.allclose(out, later)  # time-conditional
  boxed = variables["params"]["out"]["kernel"]
  assert boxed.names == ("embed_in", "embed_out")


# ------------------------------------------------------------------ config errors

@pytest.mark.parametrize("key,value,match", [
    ("act.noise_label", "t", "noise_label"),
    ("act.lam0", 1.5, "lam0"),
    ("act.w_mid", 0.9, "w_mid"),
    ("act.augment", ("xflip", "hue"), "unknown operation"),
    ("data.batch_size", 15, "even"),
    ("act.sample_with", "best", "sample_with"),
    # 8x8 digits: 1, 2 then 4 levels halve to 1x1, which the head cannot pool to 2x2.
    ("act.disc_channel_mult", (1, 1, 1, 1), r"image side 8 must be divisible by 16"),
])
def test_bad_act_config_names_the_key(key, value, match):
  c = load_config()
  section, name = key.split(".")
  c[section][name] = value
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(c)


def test_act_on_toy_points_is_refused():
  c = load_config()
  c.data.name = "toy2d"
  with pytest.raises(config_lib.ConfigError, match="image data"):
    config_lib.validate(c)


# ------------------------------------------------------------------ the trainer

def test_smoke_run_compiles_two_variants_checkpoints_the_discriminator_and_resumes_exactly(
    tmp_path, monkeypatch):
  """Also ACT's exact-resume test (test_fail_kill_resume.py covers the other objectives):
  an interrupted and resumed run ends bit for bit where the straight run does."""
  c = load_config()
  summary = loop.train(c, str(tmp_path))
  assert summary["step"] == 5
  keys = [k for k, _ in summary["compilations"]]
  assert sorted(keys) == ["VariantKey(stage=None, variant=False)",
                          "VariantKey(stage=None, variant=True)"]
  assert np.isfinite(summary["final_loss"])

  exp = Experiment(c)
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"))
  try:
    restored, _, step = checkpointer.restore_latest(exp.abstract_state)
  finally:
    checkpointer.close()
  assert step == 5
  aux = restored.aux
  assert set(aux) == {"teacher", "disc", "disc_opt", "p", "r1_ema", "r1_last"}
  init = exp.init_state()
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), aux["disc"], init.aux["disc"])
  assert any(jax.tree.leaves(moved))
  # Two R1 steps (0 and 4) moved the R1 EMA away from its initial threshold.
  assert float(aux["r1_ema"]) != float(init.aux["r1_ema"])
  # Samples come from the mu(k) teacher.
  assert samples.sampling_params(exp, restored) is aux["teacher"]

  # Stop after step 3 (as on preemption), resume, and compare everything bit for bit:
  # parameters, EMA, optimizer, teacher, discriminator and its optimizer, p, R1 EMA.
  monkeypatch.setattr(ckpt_lib.PreemptionWatch, "should_stop", lambda self, step: step == 3)
  first = loop.train(c, str(tmp_path / "stopped"))
  assert first.get("preempted") and first["step"] == 3
  monkeypatch.undo()
  second = loop.train(c, str(tmp_path / "stopped"))
  assert second["step"] == 5
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / "stopped" / "checkpoints"))
  try:
    resumed, _, _ = checkpointer.restore_latest(exp.abstract_state)
  finally:
    checkpointer.close()
  chex.assert_trees_all_equal(jax.device_get(resumed), jax.device_get(restored))
