"""One sampler dispatch: the training loop, `--mode=sample` and FID draw images the same way.

Every caller goes through `Objective.sample(params, latents, labels, key, config.sample)`.
A class-conditional model gets random labels in the loop as in FID (before the
architecture change the loop sampled conditional EDM models without labels).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import config as config_lib
from jaxdiff import parallel
from jaxdiff.train import samples
from jaxdiff.train.experiment import Experiment


@pytest.fixture(scope="module")
def conditional_digits():
  c = config_lib.load_config("digits_edm:smoke")
  c.data.num_classes = 10
  c.sample.num_steps = 2
  mesh = parallel.make_mesh(c.mesh, devices=jax.devices()[:1])
  exp = Experiment(c, mesh=mesh)
  params = exp.init_state().params
  # EDM initialises the output layer near zero: perturb every weight so labels matter.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.2 * jax.random.normal(k, p.shape, p.dtype)
                                     for p, k in zip(leaves, keys)])
  return exp, params


def _sample(exp):
  """The objective's sampler, jitted (the config is a closure constant)."""
  return jax.jit(lambda p, z, y, k: exp.objective.sample(p, z, y, k, exp.config.sample))


def test_the_loop_samples_a_conditional_model_with_random_labels(conditional_digits):
  exp, params = conditional_digits
  got = samples.generate(exp, params, 4, seed=3)
  key = jax.random.PRNGKey(3)
  latents = jax.random.normal(jax.random.fold_in(key, 0), (4,) + exp.example_shape)
  k_label, k_noise = jax.random.split(jax.random.fold_in(key, 1))
  labels = samples.random_labels(k_label, 4, 10)
  assert labels.shape == (4, 10) and np.allclose(np.asarray(labels).sum(-1), 1.0)
  sample = _sample(exp)
  with_labels = sample(params, latents, labels, k_noise)
  without = sample(params, latents, None, k_noise)
  # Two compiled programs may round differently; samples are of magnitude ~100 here
  # (untrained, perturbed weights).
  np.testing.assert_allclose(got, np.asarray(with_labels), rtol=1e-4, atol=1e-3)
  assert np.max(np.abs(got - np.asarray(without))) > 1e-1


def test_fid_sampler_is_the_objectives_sampler_per_seed(conditional_digits):
  exp, params = conditional_digits
  per_seed = samples.per_seed_sampler(exp.objective, exp.config.sample)
  latents = jax.random.normal(jax.random.PRNGKey(0), (3,) + exp.example_shape)
  labels = jax.nn.one_hot(jnp.asarray([1, 4, 9]), 10)
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  got = jax.jit(per_seed)(params, latents, labels, keys)
  want = _sample(exp)(params, latents, labels, None)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-3)
