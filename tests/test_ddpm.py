"""Tests of jaxdiff.diffusion.ddpm against DiT's own numbers and closed forms (docs/ddpm.md).

Goldens: tests/goldens/ddpm_dit.npz, made by tests/goldens/make_ddpm_goldens.py from
facebookresearch/DiT's `diffusion/` package (float64 numpy schedules; float32 torch for the
per-batch terms and the sampling loops).
"""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import types

from jaxdiff.diffusion import ddpm as _schedule
from jaxdiff.diffusion import ddpm_loss as _loss
from jaxdiff.sampling import ddpm as _sampling

# The three modules of discrete-time diffusion under one name: schedule, loss, sampling.
ddpm = types.SimpleNamespace(**{k: v for m in (_schedule, _loss, _sampling)
                                for k, v in vars(m).items() if not k.startswith("__")})

GOLDEN = np.load(os.path.join(os.path.dirname(__file__), "goldens", "ddpm_dit.npz"))
FIELDS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "alphas_cumprod_next",
          "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
          "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
          "sqrt_recipm1_alphas_cumprod", "posterior_variance",
          "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2")
# float64 schedule arrays: computed with DiT's arithmetic, so equal to the last bits; the
# tolerance only allows a libm that rounds log/cos differently.
F64_RTOL = 1e-14
# float32 per-batch terms vs DiT's torch float32: a few ulps of the largest intermediate.
F32_RTOL, F32_ATOL = 2e-5, 2e-6

LINEAR = ddpm.DiscreteSchedule.named(1000, "linear")


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_schedule_arrays_equal_dit_at_T1000(name):
  sched = ddpm.DiscreteSchedule.named(1000, name)
  idx = GOLDEN["sched_idx"]
  for field in FIELDS:
    ours = getattr(sched, field)
    assert ours.dtype == np.float64 and ours.shape == (1000,)
    np.testing.assert_allclose(ours[idx], GOLDEN[f"sched_{name}_{field}_idx"], rtol=F64_RTOL,
                               atol=0, err_msg=field)
    np.testing.assert_allclose(np.sum(ours), GOLDEN[f"sched_{name}_{field}_sum"],
                               rtol=F64_RTOL, atol=0, err_msg=field)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_schedule_arrays_equal_dit_at_T20(name):
  # T = 20 linear has beta_end = 0.02 * 1000 / 20 = 1: abar_19 = 0 and DiT's
  # sqrt_recip(m1)_alphas_cumprod end in inf; the schedule keeps that behaviour.
  sched = ddpm.DiscreteSchedule.named(20, name)
  for field in FIELDS:
    np.testing.assert_allclose(getattr(sched, field), GOLDEN[f"sched20_{name}_{field}"],
                               rtol=F64_RTOL, atol=0, err_msg=field)


def test_betas_follow_the_formulas_in_float64():
  for T in (10, 1000, 4000):
    scale = 1000 / T
    np.testing.assert_allclose(ddpm.ddpm_betas(T, "linear"),
                               scale * 1e-4 + (scale * 0.02 - scale * 1e-4) * np.arange(T) /
                               (T - 1), rtol=1e-13, atol=0)
    u = np.arange(T + 1) / T
    abar = np.cos((u + 0.008) / 1.008 * np.pi / 2)**2
    np.testing.assert_allclose(ddpm.ddpm_betas(T, "cosine"),
                               np.minimum(1 - abar[1:] / abar[:-1], 0.999), rtol=1e-12)
  assert ddpm.ddpm_betas(1000, "cosine")[-1] == 0.999  # the cap
  np.testing.assert_array_equal(ddpm.ddpm_betas(50, "squaredcos_cap_v2"),
                                ddpm.ddpm_betas(50, "cosine"))
  with pytest.raises(ValueError):
    ddpm.ddpm_betas(10, "quad")


def test_schedule_is_read_only_and_hashable():
  with pytest.raises(ValueError):
    LINEAR.betas[0] = 0.5
  assert hash(LINEAR) == hash(LINEAR)
  with pytest.raises(ValueError):
    ddpm.DiscreteSchedule.from_betas([0.1, 0.0, 0.2])


def test_posterior_coefficients_are_bayes_rule():
  # q(x_{t-1} | x_t, x0) from x_{t-1} ~ N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1}) and
  # x_t | x_{t-1} ~ N(sqrt(alpha_t) x_{t-1}, beta_t), for t >= 1.
  for name in ("linear", "cosine"):
    s = ddpm.DiscreteSchedule.named(1000, name)
    b = s.betas[1:]
    ap = s.alphas_cumprod[:-1]
    precision = 1 / (1 - ap) + (1 - b) / b
    var = 1 / precision
    np.testing.assert_allclose(s.posterior_variance[1:], var, rtol=1e-9)
    np.testing.assert_allclose(s.posterior_mean_coef1[1:], var * np.sqrt(ap) / (1 - ap),
                               rtol=1e-9)
    np.testing.assert_allclose(s.posterior_mean_coef2[1:], var * np.sqrt(1 - b) / b, rtol=1e-9)
    # t = 0: the posterior is a point mass at x0.
    assert s.posterior_variance[0] == 0
    np.testing.assert_allclose([s.posterior_mean_coef1[0], s.posterior_mean_coef2[0]], [1, 0],
                               atol=1e-12)
    assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]


def test_q_sample_and_predict_x0_round_trip():
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(rng.uniform(-1, 1, (5, 3, 3, 2)))
    noise = jnp.asarray(rng.standard_normal((5, 3, 3, 2)))
    t = jnp.asarray([0, 1, 10, 500, 999])
    x_t = ddpm.q_sample(LINEAR, x0, t, noise)
    assert x_t.dtype == jnp.float64
    np.testing.assert_allclose(ddpm.predict_x0_from_eps(LINEAR, x_t, t, noise), x0,
                               rtol=0, atol=1e-10)
    np.testing.assert_allclose(ddpm.predict_eps_from_x0(LINEAR, x_t, t, x0), noise,
                               rtol=0, atol=1e-10)


# --------------------------------------------------------------------------- DiT's terms


def _golden_batch():
  g = GOLDEN
  return (jnp.asarray(g["loss_x0"]), jnp.asarray(g["loss_noise"]), jnp.asarray(g["loss_t"],
          jnp.int32), jnp.asarray(g["loss_model_output"]))


def _close32(actual, key):
  np.testing.assert_allclose(np.asarray(actual), GOLDEN[key], rtol=F32_RTOL, atol=F32_ATOL,
                             err_msg=key)


def test_q_sample_posterior_and_p_mean_variance_match_dit():
  x0, noise, t, out = _golden_batch()
  x_t = ddpm.q_sample(LINEAR, x0, t, noise)
  assert x_t.dtype == jnp.float32
  _close32(x_t, "loss_x_t")
  x_t = jnp.asarray(GOLDEN["loss_x_t"])
  mean, var, logvar = ddpm.q_posterior_mean_variance(LINEAR, x0, x_t, t)
  _close32(mean, "post_mean")
  _close32(var, "post_variance")
  _close32(logvar, "post_log_variance")
  for clip, tag in ((False, ""), (True, "_clip")):
    pmv = ddpm.p_mean_variance(LINEAR, out, x_t, t, learn_sigma=True, clip_denoised=clip)
    _close32(pmv.mean, f"pmv{tag}_mean")
    _close32(pmv.variance, f"pmv{tag}_variance")
    _close32(pmv.log_variance, f"pmv{tag}_log_variance")
    _close32(pmv.pred_x0, f"pmv{tag}_pred_xstart")
  eps = out[..., :3]
  for sigma_small, tag in ((False, "large"), (True, "small")):
    pmv = ddpm.p_mean_variance(LINEAR, eps, x_t, t, learn_sigma=False, sigma_small=sigma_small)
    _close32(pmv.log_variance, f"pmv_fixed_{tag}_log_variance")
    _close32(pmv.mean, f"pmv_fixed_{tag}_mean")


@pytest.mark.parametrize("rescale", [False, True])
def test_training_losses_and_gradient_match_dit(rescale):
  # DiT's RESCALED_MSE multiplies the vb by T / 1000: its golden is at T = 2000.
  x0, noise, t, out = _golden_batch()
  sched = ddpm.DiscreteSchedule.named(2000) if rescale else LINEAR
  x_t = ddpm.q_sample(sched, x0, t, noise)
  tag = "_rescaled" if rescale else ""

  def total(model_output):
    terms = ddpm.training_losses(sched, model_output, x0, x_t, t, noise, learn_sigma=True,
                                 rescale_learned_sigmas=rescale)
    return terms["loss"].sum(), terms

  (_, terms), grad = jax.jit(jax.value_and_grad(total, has_aux=True))(out)
  for key in ("loss", "mse", "vb"):
    _close32(terms[key], f"loss{tag}_{key}")
  # The golden rows cover t = 0 (decoder NLL, with pixels at -1, +1 and +-0.9995) and t > 0.
  assert GOLDEN["loss_t"][0] == 0 and GOLDEN["loss_x0"][0, 0, 0, 0] == -1.0
  # DiT's gradient through its detach: d mse / d eps and d vb / d v only.
  np.testing.assert_allclose(np.asarray(grad), GOLDEN[f"loss{tag}_grad"], rtol=F32_RTOL,
                             atol=1e-7)


def test_frozen_mean_trick():
  x0, noise, t, out = _golden_batch()
  x_t = jnp.asarray(GOLDEN["loss_x_t"])
  term = lambda name: lambda o: ddpm.training_losses(LINEAR, o, x0, x_t, t, noise)[name].sum()
  vb_grad, mse_grad = jax.jit(jax.grad(term("vb")))(out), jax.jit(jax.grad(term("mse")))(out)
  assert np.all(np.asarray(vb_grad[..., :3]) == 0)  # the bound never moves the mean
  assert np.any(np.asarray(vb_grad[..., 3:]) != 0)
  assert np.all(np.asarray(mse_grad[..., 3:]) == 0)
  d = np.prod(x0.shape[1:])
  np.testing.assert_allclose(mse_grad[..., :3], -2 * (noise - out[..., :3]) / d, rtol=1e-5,
                             atol=1e-8)


def test_without_learn_sigma_the_loss_is_the_mse():
  x0, noise, t, out = _golden_batch()
  x_t = jnp.asarray(GOLDEN["loss_x_t"])
  terms = ddpm.training_losses(LINEAR, out[..., :3], x0, x_t, t, noise, learn_sigma=False)
  assert set(terms) == {"loss", "mse"}
  _close32(terms["loss"], "loss_mse")
  with pytest.raises(ValueError):
    ddpm.training_losses(LINEAR, out[..., :3], x0, x_t, t, noise, learn_sigma=True)


# --------------------------------------------------------------------------- closed forms


def test_normal_kl_and_discretized_likelihood_known_values():
  with jax.enable_x64(True):
    assert float(ddpm.normal_kl(0.3, -1.0, 0.3, -1.0)) == 0.0
    # KL(N(1, 4) || N(0, 1)) = 0.5 (4 + 1 - 1 - ln 4).
    np.testing.assert_allclose(float(ddpm.normal_kl(1.0, math.log(4.0), 0.0, 0.0)),
                               0.5 * (4 + 1 - 1 - math.log(4.0)), rtol=1e-14)
    x = jnp.asarray([0.0, 0.37, -1.0, 1.0, 0.9995, -0.9995])
    means = jnp.asarray([0.0, 0.2, -0.9, 0.95, 0.9, -0.99])
    log_scales = jnp.log(jnp.asarray([0.01, 0.3, 0.05, 0.02, 0.1, 0.01]))
    ll = np.asarray(ddpm.discretized_gaussian_log_likelihood(x, means, log_scales))
    s = np.exp(np.asarray(log_scales))
    xm, mm = np.asarray(x), np.asarray(means)
    cdf = stats.norm.cdf
    exact = np.log(cdf((xm - mm + 1 / 255) / s) - cdf((xm - mm - 1 / 255) / s))
    exact[2] = np.log(cdf((xm[2] - mm[2] + 1 / 255) / s[2]))  # x < -0.999: lower tail
    exact[3] = np.log(1 - cdf((xm[3] - mm[3] - 1 / 255) / s[3]))  # x > 0.999: upper tail
    exact[4] = np.log(1 - cdf((xm[4] - mm[4] - 1 / 255) / s[4]))
    exact[5] = np.log(cdf((xm[5] - mm[5] + 1 / 255) / s[5]))
    # The tanh approximation of Phi is within ~2e-4 absolute (bins here hold mass >= 0.01).
    np.testing.assert_allclose(np.exp(ll), np.exp(exact), rtol=0, atol=3e-4)
    # Interior bin at the mode: p ~ 2/255 phi(0) / sigma.
    ll0 = float(ddpm.discretized_gaussian_log_likelihood(
        jnp.zeros(()), jnp.zeros(()), jnp.log(jnp.asarray(1.0))))
    np.testing.assert_allclose(ll0, math.log(2 / 255 * stats.norm.pdf(0)), rtol=1e-5)


def test_vb_is_zero_for_the_true_eps_and_posterior_variance():
  # eps = the true noise gives pred_x0 = x0, so the model mean is the posterior mean; v = -1
  # picks log variance = posterior_log_variance_clipped: KL = 0 at every t > 0. v = +1
  # (variance beta_t) gives the closed form 0.5 (ln(beta / beta~) + beta~ / beta - 1) / ln 2.
  with jax.enable_x64(True):
    rng = np.random.default_rng(1)
    shape = (6, 4, 4, 3)
    x0 = jnp.asarray(rng.uniform(-0.9, 0.9, shape))
    noise = jnp.asarray(rng.standard_normal(shape))
    t = jnp.asarray([1, 2, 50, 400, 998, 999])
    x_t = ddpm.q_sample(LINEAR, x0, t, noise)
    out = jnp.concatenate([noise, -jnp.ones(shape)], -1)
    terms = ddpm.training_losses(LINEAR, out, x0, x_t, t, noise)
    np.testing.assert_allclose(terms["mse"], 0, atol=1e-20)
    np.testing.assert_allclose(terms["vb"], 0, atol=1e-9)
    out = jnp.concatenate([noise, jnp.ones(shape)], -1)
    vb, _ = ddpm.vb_terms_bpd(LINEAR, out, x0, x_t, t)
    tn = np.asarray(t)
    beta, post = LINEAR.betas[tn], np.exp(LINEAR.posterior_log_variance_clipped[tn])
    expected = 0.5 * (np.log(beta / post) + post / beta - 1) / np.log(2)
    np.testing.assert_allclose(vb, expected, rtol=1e-9, atol=1e-15)  # cancellation near 0


def test_decoder_nll_at_t0_for_known_values():
  # t = 0, true eps: mean = x0 exactly (coef1_0 = 1, coef2_0 = 0); with v = -1 the scale is
  # sqrt(beta~_1). Every interior pixel then has -log2(Phi(d) - Phi(-d)), d = (1/255) /
  # sqrt(beta~_1) ~ 0.39 (approximate Phi), pixels at +-1 the tail -log2(Phi(d)).
  with jax.enable_x64(True):
    x0 = jnp.asarray([[0.1, -0.5, 1.0, -1.0]])
    noise = jnp.asarray([[0.3, -1.2, 0.5, 2.0]])
    t = jnp.asarray([0])
    x_t = ddpm.q_sample(LINEAR, x0, t, noise)
    out = jnp.concatenate([noise, -jnp.ones_like(noise)], -1)
    vb, pred = ddpm.vb_terms_bpd(LINEAR, out, x0, x_t, t)
    np.testing.assert_allclose(pred, x0, atol=1e-12)
    d = (1 / 255) / math.sqrt(LINEAR.posterior_variance[1])
    phi = lambda z: 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))
    interior, tail = -math.log2(phi(d) - phi(-d)), -math.log2(phi(d))
    np.testing.assert_allclose(float(vb[0]), (2 * interior + 2 * tail) / 4, rtol=1e-10)
    exact = (2 * -math.log2(stats.norm.cdf(d) - stats.norm.cdf(-d)) +
             2 * -math.log2(stats.norm.cdf(d))) / 4
    np.testing.assert_allclose(float(vb[0]), exact, rtol=1e-3)


# --------------------------------------------------------------------------- respacing

SPACINGS = {
    (1000, "250"): "250", (1000, "ddim50"): "ddim50", (1000, "100"): "100",
    (1000, "10"): "10", (1000, "ddim10"): "ddim10", (1000, "ddim25"): "ddim25",
    (1000, "10,15,20"): "10_15_20", (300, "10,15,20"): "T300_10_15_20", (1000, "7,3"): "7_3",
}


@pytest.mark.parametrize("key", list(SPACINGS))
def test_space_timesteps_equals_dit(key):
  T, spec = key
  np.testing.assert_array_equal(ddpm.space_timesteps(T, spec), GOLDEN[f"space_{SPACINGS[key]}"])


def test_space_timesteps_list_form_and_errors():
  np.testing.assert_array_equal(ddpm.space_timesteps(300, [10, 15, 20]),
                                ddpm.space_timesteps(300, "10,15,20"))
  with pytest.raises(ValueError):
    ddpm.space_timesteps(1000, "ddim3000")
  with pytest.raises(ValueError):
    ddpm.space_timesteps(10, "20")


@pytest.mark.parametrize("name,spec", [("250", "250"), ("ddim50", "ddim50"), ("10", "10"),
                                       ("7_3", "7,3")])
def test_respaced_betas_equal_dit(name, spec):
  betas = ddpm.ddpm_betas(1000, "linear")
  new_betas, tmap = ddpm.respaced_betas(betas, ddpm.space_timesteps(1000, spec))
  np.testing.assert_allclose(new_betas, GOLDEN[f"respaced_betas_{name}"], rtol=F64_RTOL, atol=0)
  np.testing.assert_array_equal(tmap, GOLDEN[f"timestep_map_{name}"])
  # The respaced chain has the original abar at its kept steps.
  sub = ddpm.DiscreteSchedule.from_betas(new_betas)
  np.testing.assert_allclose(sub.alphas_cumprod, LINEAR.alphas_cumprod[tmap], rtol=1e-12)


# --------------------------------------------------------------------------- samplers


def _loop_model(x, t):
  """tests/goldens/make_ddpm_goldens.py's `loop_model` in jnp (t: the ORIGINAL timestep)."""
  tt = t.astype(x.dtype).reshape(-1, 1, 1, 1)
  return jnp.concatenate([0.5 * jnp.tanh(x) + 1e-3 * tt, 0.3 * jnp.cos(x) - 0.1], -1)


@pytest.mark.parametrize("name,spec,kind,kwargs", [
    ("p10", "10", "p", dict(clip_denoised=False)),
    ("p10_clip", "10", "p", dict(clip_denoised=True)),
    ("ddim10_eta0", "ddim10", "ddim", dict(clip_denoised=False, eta=0.0)),
    ("ddim10_eta05_clip", "10", "ddim", dict(clip_denoised=True, eta=0.5)),
])
def test_sampling_loops_match_dit(name, spec, kind, kwargs):
  g = {k: GOLDEN[f"loop_{name}_{k}"] for k in ("x_T", "step_noise", "sample")}
  sampler = ddpm.ancestral_sample if kind == "p" else ddpm.ddim_sample
  sample = sampler(jax.random.PRNGKey(0), LINEAR, _loop_model, g["x_T"].shape,
                   use_timesteps=spec, noise=g["x_T"], step_noise=g["step_noise"], **kwargs)
  # Unclipped, the stand-in network drives |x| to ~550: compare relatively.
  np.testing.assert_allclose(np.asarray(sample), g["sample"], rtol=1e-5, atol=1e-6)


MU, S = 0.3, 0.5


def _exact_eps_fn(v):
  """E[eps | x_t] for x0 ~ N(MU, S^2) per element, with variance value v (learn_sigma)."""
  abar = jnp.asarray(LINEAR.alphas_cumprod, jnp.float32)

  def fn(x, t):
    ab = abar[t][:, None]
    a, b = jnp.sqrt(ab), jnp.sqrt(1 - ab)
    eps = b * (x - a * MU) / (a**2 * S**2 + b**2)
    return jnp.concatenate([eps, jnp.full_like(x, v)], -1)

  return fn


def _predicted_moments(kept, kind, v=0.0):
  """The sampler's exact output N(m, var) for Gaussian data, by a float64 recursion written
  from the Gaussian posterior E[x0 | x] (not from ddpm's functions): each step is affine."""
  abar_all = LINEAR.alphas_cumprod
  m, var = 0.0, 1.0
  for k in range(len(kept) - 1, -1, -1):
    ab = abar_all[kept[k]]
    ap = abar_all[kept[k - 1]] if k > 0 else 1.0
    a, b = math.sqrt(ab), math.sqrt(1 - ab)
    V = a * a * S * S + b * b
    g0, g1 = MU - a * a * S * S * MU / V, a * S * S / V  # E[x0 | x] = g0 + g1 x
    if kind == "ddim":
      e1 = b / V  # E[eps | x] = e1 (x - a MU)
      A = math.sqrt(ap) * g1 + math.sqrt(1 - ap) * e1
      B = math.sqrt(ap) * g0 - math.sqrt(1 - ap) * e1 * a * MU
      sd2 = 0.0
    else:
      beta = 1 - ab / ap
      c1 = beta * math.sqrt(ap) / (1 - ab)
      c2 = (1 - ap) * math.sqrt(1 - beta) / (1 - ab)
      A, B = c1 * g1 + c2, c1 * g0
      def post(j):  # beta~ of respaced step j
        abj = abar_all[kept[j]]
        apj = abar_all[kept[j - 1]]
        return (1 - abj / apj) * (1 - apj) / (1 - abj)
      log_min = math.log(post(k) if k > 0 else post(1))
      f = (v + 1) / 2
      sd2 = math.exp(f * math.log(beta) + (1 - f) * log_min) if k > 0 else 0.0
    m, var = A * m + B, A * A * var + sd2
  return m, math.sqrt(var)


def _moments(x):
  x = np.asarray(x, np.float64)
  return x.mean(), x.std()


@pytest.mark.parametrize("v,use_timesteps", [(-1.0, None), (1.0, None), (-1.0, "100"),
                                             (1.0, "ddim50")])
def test_ancestral_sampler_recovers_gaussian_data(v, use_timesteps):
  n = 16384
  sample = jax.jit(lambda key: ddpm.ancestral_sample(key, LINEAR, _exact_eps_fn(v), (n, 1),
                                                     use_timesteps=use_timesteps))(
                                                         jax.random.PRNGKey(3))
  mean, std = _moments(sample)
  kept = (np.arange(1000) if use_timesteps is None else
          ddpm.space_timesteps(1000, use_timesteps))
  pm, ps = _predicted_moments(kept, "p", v)
  se = S / math.sqrt(n)
  assert abs(mean - pm) < 5 * se and abs(std - ps) < 5 * se / math.sqrt(2)
  if use_timesteps is None:  # the full chain reproduces the data distribution
    assert abs(pm - MU) < 0.005 and abs(ps - S) < 0.01
    assert abs(mean - MU) < 0.02 and abs(std - S) < 0.02


@pytest.mark.parametrize("use_timesteps", [None, "ddim50"])
def test_ddim_recovers_gaussian_data(use_timesteps):
  n = 16384
  sample = ddpm.ddim_sample(jax.random.PRNGKey(4), LINEAR, _exact_eps_fn(0.0), (n, 1),
                            use_timesteps=use_timesteps)
  mean, std = _moments(sample)
  kept = (np.arange(1000) if use_timesteps is None else
          ddpm.space_timesteps(1000, use_timesteps))
  pm, ps = _predicted_moments(kept, "ddim")
  se = S / math.sqrt(n)
  assert abs(mean - pm) < 5 * se and abs(std - ps) < 5 * se / math.sqrt(2)
  if use_timesteps is None:
    assert abs(mean - MU) < 0.02 and abs(std - S) < 0.02


def test_ddim_eta0_is_deterministic_and_eta1_is_not():
  shape = (64, 2)
  x_T = jax.random.normal(jax.random.PRNGKey(9), shape)
  run = jax.jit(lambda key, eta: ddpm.ddim_sample(key, LINEAR, _exact_eps_fn(0.0), shape,
                                                  use_timesteps="ddim50", eta=eta, noise=x_T))
  a = run(jax.random.PRNGKey(0), 0.0)
  b = run(jax.random.PRNGKey(1), 0.0)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  c = run(jax.random.PRNGKey(0), 1.0)
  d = run(jax.random.PRNGKey(1), 1.0)
  assert not np.allclose(np.asarray(c), np.asarray(d))


def test_sampler_passes_original_timesteps():
  seen = []

  def fn(x, t):
    jax.debug.callback(lambda tt: seen.append(int(tt[0])), t)
    return jnp.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)

  ddpm.ancestral_sample(jax.random.PRNGKey(0), LINEAR, fn, (2, 1), use_timesteps="ddim10")
  jax.effects_barrier()
  assert seen == list(range(900, -1, -100))


def test_cfg_eps():
  cond, uncond = jnp.asarray([1.0, 2.0]), jnp.asarray([0.5, -1.0])
  np.testing.assert_allclose(ddpm.cfg_eps(cond, uncond, 1.0), cond)
  np.testing.assert_allclose(ddpm.cfg_eps(cond, uncond, 0.0), uncond)
  np.testing.assert_allclose(ddpm.cfg_eps(cond, uncond, 4.0), uncond + 4 * (cond - uncond))
