"""The difficulty study (`--mode=analyze`) on the recipe's own objective: the samplers' probe
levels and cluster ranges, the objectives' probe losses, and a discrete-time (DDPM) smoke run.
"""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdiff import config as config_lib
from jaxdiff import objectives, parallel
from jaxdiff.curriculum import analysis, study
from jaxdiff.objectives.base import LognormalSampler
from jaxdiff.objectives.ddpm import DDPM, DiscreteTimeSampler
from jaxdiff.objectives.flow import FlowMatching, UniformTimeSampler


def mesh_of(n: int):
  return parallel.make_mesh(ml_collections.ConfigDict({"data": n, "fsdp": 1}),
                            devices=jax.devices()[:n])


# ----------------------------------------------------------------- probe levels


@pytest.mark.parametrize("n,m,p_mean,p_std", [(20, 64, -1.2, 1.2), (2, 4, -1.2, 1.2),
                                              (7, 5, -0.4, 1.0)])
def test_edm_probe_set_equals_the_old_lognormal_probe_set(n, m, p_mean, p_std):
  """The sampler's levels and the study's probe set are bit-identical to make_probe_set's."""
  x0 = np.random.default_rng(0).uniform(-1, 1, (m, 4, 4, 1)).astype(np.float32)
  c = config_lib.load_config("digits_curriculum:smoke")
  c.curriculum.num_clusters, c.objective.p_mean, c.objective.p_std = n, p_mean, p_std
  old = analysis.make_probe_set(jax.random.PRNGKey(study._PROBE_NOISE_SEED + c.seed),
                                jnp.asarray(x0), n, p_mean, p_std)
  sampler = objectives.get("edm").noise_sampler(c)
  assert isinstance(sampler, LognormalSampler) and sampler.units == "sigma"
  levels = sampler.probe_levels(n, m)
  assert levels.shape == (n, m)
  np.testing.assert_array_equal(levels.reshape(-1), np.asarray(old["sigma"]))
  new = study.probe_set(c, x0, sampler)
  for key in ("x0", "noise", "cluster"):
    np.testing.assert_array_equal(np.asarray(new[key]), np.asarray(old[key]), err_msg=key)
  np.testing.assert_array_equal(np.asarray(new["level"]), np.asarray(old["sigma"]))
  # Its ranges are the lognormal edges the report always printed.
  ranges = np.asarray(sampler.cluster_ranges(n))
  assert ranges[0, 0] == 0 and ranges[-1, 1] == np.inf
  inside = (levels >= ranges[:, :1]) & (levels < ranges[:, 1:])
  assert inside.all()


@pytest.mark.parametrize("kind", ["uniform", "snr", "logsnr"])
def test_ddpm_probe_levels_lie_in_their_timestep_clusters(kind):
  n, m, T = 20, 64, 1000
  sampler = DiscreteTimeSampler(T, "linear", kind)
  assert sampler.units == "timestep"
  levels = sampler.probe_levels(n, m)
  assert levels.shape == (n, m) and np.issubdtype(levels.dtype, np.integer)
  of = sampler.cluster_of_timestep(n)
  np.testing.assert_array_equal(of[levels], np.repeat(np.arange(n), m).reshape(n, m))
  ranges = sampler.cluster_ranges(n)
  # Half-open, contiguous, covering [0, T), each holding its cluster's probe levels.
  assert ranges[0][0] == 0 and ranges[-1][1] == T
  assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
  for (lo, hi), row in zip(ranges, levels):
    assert lo <= row.min() and row.max() < hi
    assert np.all(np.diff(row) >= 0)
    # Evenly spread: as many distinct timesteps as the cluster allows.
    assert len(np.unique(row)) == min(m, hi - lo)
  if kind == "uniform":
    assert ranges[:2] == [(0, 50), (50, 100)]
  if kind == "snr":  # ANT's SNR clusters start one timestep wide: M repeats of it.
    assert ranges[0] == (0, 1) and np.all(levels[0] == 0)


def test_flow_probe_levels_lie_in_their_t_intervals():
  n, m = 8, 5
  sampler = objectives.get("flow").noise_sampler(config_lib.load_config("digits_ddpm:smoke"))
  assert isinstance(sampler, UniformTimeSampler) and sampler.units == "t"
  levels = sampler.probe_levels(n, m)
  ranges = np.asarray(sampler.cluster_ranges(n))
  np.testing.assert_allclose(ranges[:, 0], np.arange(n) / n)
  np.testing.assert_allclose(ranges[:, 1], np.arange(1, n + 1) / n)
  assert np.all((levels > ranges[:, :1]) & (levels < ranges[:, 1:]))
  np.testing.assert_allclose(levels[3], (3 + (np.arange(m) + 0.5) / m) / n)


# ----------------------------------------------------------------- probe losses


def _toy_apply_fn(out_channels=1):
  """A deterministic stand-in network: F(x, c) = w x + 1e-3 c (+ extra channels)."""
  def apply_fn(params, x, c_noise, class_labels=None, augment_labels=None, train=False,
               dropout_key=None):
    out = params["w"] * x + 1e-3 * c_noise.reshape(-1, 1, 1, 1)
    return jnp.concatenate([out] * out_channels, axis=-1)
  apply_fn.log_variance = None
  return apply_fn


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_ddpm_probe_loss_is_the_eps_mse_by_hand(learn_sigma):
  rng = np.random.default_rng(1)
  x0 = rng.uniform(-1, 1, (3, 2, 2, 1)).astype(np.float32)
  noise = rng.normal(size=x0.shape).astype(np.float32)
  t = np.array([0, 417, 999])
  params = {"w": jnp.float32(0.7)}
  obj = DDPM(_toy_apply_fn(2 if learn_sigma else 1), DiscreteTimeSampler(1000),
             num_timesteps=1000, learn_sigma=learn_sigma)
  got = np.asarray(obj.probe_loss(params, jnp.asarray(x0), jnp.asarray(noise),
                                  jnp.asarray(t, jnp.float32)))
  betas = np.linspace(1e-4, 0.02, 1000)
  abar = np.cumprod(1 - betas)[t].reshape(-1, 1, 1, 1)
  x_t = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise
  eps = 0.7 * x_t + 1e-3 * t.reshape(-1, 1, 1, 1)
  want = np.mean((eps - noise).reshape(3, -1) ** 2, axis=1)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_flow_and_edm_probe_losses_by_hand():
  rng = np.random.default_rng(2)
  x0 = rng.uniform(-1, 1, (2, 2, 2, 1)).astype(np.float32)
  noise = rng.normal(size=x0.shape).astype(np.float32)
  params = {"w": jnp.float32(0.3)}
  apply_fn = _toy_apply_fn()
  t = np.array([0.25, 0.9], np.float32)
  flow = FlowMatching(apply_fn, UniformTimeSampler())
  x_t = (1 - t.reshape(-1, 1, 1, 1)) * x0 + t.reshape(-1, 1, 1, 1) * noise
  v = 0.3 * x_t + 1e-3 * t.reshape(-1, 1, 1, 1)
  np.testing.assert_allclose(
      np.asarray(flow.probe_loss(params, x0, noise, t)),
      np.mean((v - (noise - x0)).reshape(2, -1) ** 2, axis=1), rtol=1e-5)
  # EDM: the EDM-weighted loss the study always probed with.
  from jaxdiff import diffusion
  from jaxdiff.objectives.edm import EDMObjective
  sigma = np.array([0.05, 3.0], np.float32)
  edm = EDMObjective(apply_fn, LognormalSampler(), sigma_data=0.5)
  x = x0 + sigma.reshape(-1, 1, 1, 1) * noise
  denoised = diffusion.denoise(apply_fn, params, jnp.asarray(x), jnp.asarray(sigma),
                               sigma_data=0.5)
  want = np.asarray(diffusion.edm_loss_weight(sigma, 0.5)) * np.sum(
      (np.asarray(denoised) - x0).reshape(2, -1) ** 2, axis=1)
  np.testing.assert_allclose(np.asarray(edm.probe_loss(params, x0, noise, sigma)), want,
                             rtol=1e-6)


def test_probe_objective_is_the_recipes_when_it_has_a_probe_loss():
  from jaxdiff.commands import analyze
  assert {n for n in objectives.names() if objectives.get(n).probe_loss is not None} == {
      "edm", "ddpm", "flow"}
  c = config_lib.load_config("digits_ddpm:smoke")
  assert analyze.study_train_config(c).objective.name == "ddpm"
  c.objective.name = "stf"  # regresses onto a reference average: EDM's loss probes
  assert analyze.study_train_config(c).objective.name == "edm"


# ----------------------------------------------------------------- discrete-time smoke


def test_analyze_smoke_in_discrete_time_reports_timestep_clusters(tmp_path):
  from jaxdiff.commands import analyze
  c = config_lib.load_config("digits_ddpm:smoke")
  c.curriculum.num_clusters = 4
  summary = analyze.run(c, str(tmp_path), mesh=mesh_of(2))
  conv = summary["convergence"]
  assert conv["objective"] == "ddpm" and conv["units"] == "timestep"
  assert conv["cluster_kind"] == "uniform"
  assert [(r["timestep_lo"], r["timestep_hi"]) for r in conv["rows"]] == [
      (0, 250), (250, 500), (500, 750), (750, 1000)]
  assert all(np.isfinite(r["loss_final"]) for r in conv["rows"])
  out = tmp_path / "analysis"
  with open(out / "convergence.csv") as f:
    assert f.readline().startswith("cluster,timestep_lo,timestep_hi,loss_initial")
  report = (out / "report.md").read_text()
  assert "timestep range" in report and "| 3 | [750, 1000) |" in report
  assert "ddpm objective" in report
  for name in ("kl.png", "convergence.png", "summary.json"):
    assert os.path.exists(out / name), name
