"""The discrete-time objective (objectives/ddpm.py; docs/ddpm.md) and the curriculum in its
paper's own setting: integer timesteps clustered by equal intervals or ANT's SNR / log-SNR
clusters, a stage drawing exactly from its clusters, one compiled step per stage."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdiff import config as config_lib
from jaxdiff import curriculum, diffusion, parallel
from jaxdiff.curriculum import snr_clusters
from jaxdiff.curriculum import settings as curriculum_settings
from jaxdiff.diffusion import ddpm_loss
from jaxdiff.objectives.ddpm import DDPM, DiscreteTimeSampler


def test_cluster_edges_grow_snr_and_logsnr():
  betas = diffusion.ddpm_betas(1000, "linear")
  for kind in ("snr", "logsnr"):
    np.testing.assert_array_equal(np.asarray(curriculum.cluster_edges(4, kind)),
                                  snr_clusters.snr_cluster_edges(4, betas, kind))
  np.testing.assert_array_equal(np.asarray(curriculum.cluster_edges(4, "logsnr")),
                                [220, 519, 777])
  np.testing.assert_array_equal(np.asarray(curriculum.cluster_edges(4, "uniform")),
                                [250, 500, 750])


@pytest.mark.parametrize("kind", ["uniform", "logsnr"])
def test_stage_draws_exactly_its_clusters(kind):
  sampler = DiscreteTimeSampler(1000, "linear", kind)
  edges = np.asarray(curriculum.cluster_edges(4, kind))
  stage = sampler.restrict((False, True, False, True))
  t = np.asarray(stage(jax.random.PRNGKey(0), (40000,))).astype(int)
  cluster = np.searchsorted(edges, t, side="right")
  assert set(cluster) == {1, 3}
  allowed = stage.allowed()
  assert set(t) == set(allowed)                          # every allowed step is drawn ...
  counts = np.bincount(t, minlength=1000)[allowed]
  assert counts.min() > 0.5 * counts.mean()               # ... about equally often
  np.testing.assert_array_equal(np.asarray(stage.in_enabled_clusters(jnp.asarray(t[:50]))),
                                np.ones(50, bool))


def test_loss_is_dits_hybrid_loss_on_the_model_output():
  schedule = diffusion.DiscreteSchedule.named(1000, "linear")
  apply_fn = lambda p, x, t, *a: jnp.concatenate([p * x, jnp.tanh(x)], axis=-1)
  obj = DDPM(apply_fn, DiscreteTimeSampler(), learn_sigma=True)
  x0 = jax.random.uniform(jax.random.PRNGKey(1), (4, 4, 4, 3), minval=-1, maxval=1)
  key = jax.random.PRNGKey(2)
  loss, metrics = obj.loss(jnp.float32(0.5), None, {"image": x0}, key, 0)
  k_t, k_noise, _ = jax.random.split(key, 3)
  t = DiscreteTimeSampler()(k_t, (4,)).astype(jnp.int32)
  noise = jax.random.normal(k_noise, x0.shape)
  x_t = diffusion.q_sample(schedule, x0, t, noise)
  want = ddpm_loss.training_losses(schedule, apply_fn(0.5, x_t, t), x0, x_t, t, noise,
                                   learn_sigma=True)["loss"]
  np.testing.assert_allclose(float(loss), float(jnp.mean(want)), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(metrics["sigma"]), np.asarray(t, np.float32))


def test_one_compilation_per_stage_in_discrete_time(tmp_path):
  from jaxdiff.train import loop
  c = config_lib.load_config("toy2d_edm:smoke")
  c.objective.name = "ddpm"
  c.ddpm.sample_steps = "10"
  c.train.num_steps, c.train.log_every, c.train.loss_buckets = 8, 1, 0
  for key, value in dict(enabled=True, kind="logsnr", num_clusters=4, pacing="fixed",
                         steps_per_stage=2).items():
    c.curriculum[key] = value
  mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": 2, "fsdp": 1}),
                            devices=jax.devices()[:2])
  summary = loop.train(c, str(tmp_path), mesh=mesh)
  masks = [str(curriculum_settings.mask_for_stage(c.curriculum, s)) for s in (1, 2, 3, 4)]
  assert sorted(k for k, _ in summary["compilations"]) == sorted(masks)
  assert np.isfinite(summary["final_loss"]) and np.isfinite(summary["quality"]["value"])


def test_bad_ddpm_settings_are_named():
  c = config_lib.load_config("toy2d_edm")
  c.objective.name = "ddpm"
  c.ddpm.sample_steps = "ddim2000"
  with pytest.raises(config_lib.ConfigError, match="ddpm.sample_steps='ddim2000'"):
    config_lib.validate(c)
  c.ddpm.sample_steps, c.ddpm.sampler = "250", "plms"
  with pytest.raises(config_lib.ConfigError, match="ddpm.sampler='plms'"):
    config_lib.validate(c)
  c = config_lib.load_config("toy2d_edm")
  c.curriculum.enabled, c.curriculum.kind = True, "snr"
  with pytest.raises(config_lib.ConfigError, match="curriculum.kind='snr'"):
    config_lib.validate(c) or __import__("jaxdiff.train.experiment").train.experiment.Experiment(c)


@pytest.mark.parametrize("kind", ["uniform", "snr", "logsnr"])
def test_stage_sampler_first_used_inside_jit(kind):
  """The clusters of a stage are host constants even when first computed inside a trace
  (a curriculum run's first restricted step; found by the digits DDPM experiment)."""
  from jaxdiff.objectives import ddpm as ddpm_objective
  ddpm_objective._cluster_of_timestep.cache_clear()
  mask = (False,) * 10 + (True,) * 10
  sampler = ddpm_objective.DiscreteTimeSampler(kind=kind).restrict(mask)
  t = jax.jit(lambda k: sampler(k, (256,)))(jax.random.PRNGKey(0))
  inside = jax.jit(sampler.in_enabled_clusters)(t)
  assert bool(np.all(np.asarray(inside)))
