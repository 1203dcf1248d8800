"""Learning-rate schedule and EMA rules of jaxdiff/optim.py (docs/edm.md, EDM2's training
details: inverse-square-root decay and the power-function EMA)."""
import ml_collections
import numpy as np
import pytest

from jaxdiff import config as config_lib
from jaxdiff import optim


def _optim(**kw):
  return ml_collections.ConfigDict(dict(dict(lr=1e-3, warmup_steps=0, decay_steps=0), **kw))


def test_lr_warmup_and_inverse_sqrt_decay():
  assert optim.learning_rate_schedule(_optim()) == 1e-3                 # constant: a float
  ect = optim.learning_rate_schedule(_optim(decay_steps=2000))          # ECT ImageNet-64
  for step in (0, 1999, 2000, 8000, 80000):
    want = 1e-3 / np.sqrt(max(step / 2000, 1))
    np.testing.assert_allclose(float(ect(step)), want, rtol=1e-6)
  both = optim.learning_rate_schedule(_optim(warmup_steps=10, decay_steps=20))
  np.testing.assert_allclose([float(both(s)) for s in (0, 9, 20, 80)],
                             [1e-4, 1e-3, 1e-3, 1e-3 / 2], rtol=1e-6)


def test_power_ema_exponent_gives_the_relative_std():
  """gamma solves sigma_rel = sqrt((g + 1) / ((g + 2)^2 (g + 3))) (EDM2, Eq. 3); the values
  quoted in the EDM2 paper are gamma = 16.97 at 0.05 and 6.94 at 0.10."""
  for std, quoted in ((0.05, 16.97), (0.10, 6.94)):
    g = optim.power_ema_exponent(std)
    np.testing.assert_allclose(np.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3))), std, rtol=1e-9)
    assert round(g, 2) == quoted
  with pytest.raises(ValueError, match="ema.std"):
    optim.power_ema_exponent(0.3)


def test_power_ema_decay_follows_the_step():
  ema = ml_collections.ConfigDict(dict(kind="power", std=0.10))
  g = optim.power_ema_exponent(0.10)
  # After the first update the EMA is the parameters (beta 0); then (1 - 1/t)^(g + 1).
  for step in (0, 1, 9, 999):
    t = step + 1
    np.testing.assert_allclose(float(optim.ema_decay(step, ema, 128)), (1 - 1 / t) ** (g + 1),
                               rtol=1e-5)


def test_bad_schedule_and_ema_values_are_named():
  c = config_lib.load_config("digits_edm")
  c.ema.kind, c.ema.std = "power", 0.5
  with pytest.raises(config_lib.ConfigError, match="ema.std=0.5"):
    config_lib.validate(c)
  c.ema.std, c.optim.decay_steps = 0.05, -1
  with pytest.raises(config_lib.ConfigError, match="optim.decay_steps=-1"):
    config_lib.validate(c)
