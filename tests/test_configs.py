"""Every recipe in configs/ loads, validates, and accepts `:smoke` (a tiny, valid variant).

Training each smoke recipe is covered per method elsewhere (test_train, test_act,
test_stf_train, test_consistency_objectives, test_curriculum_train, test_data_tfds);
here every file is checked at once, so a new recipe cannot ship without a working
`:smoke` or with a key its validation refuses.
"""
import pytest

from jaxdiff import config as config_lib

RECIPES = config_lib.recipe_names()


def load(name, arg):
  return config_lib.load_config(f"{name}:{arg}")


def test_there_are_recipes_for_every_method():
  for name in ("digits_edm", "digits_curriculum", "digits_stf", "digits_ect", "digits_sct",
               "digits_act", "cifar10_edm", "cifar10_act", "imagenet64_act", "cifar10_ct",
               "cifar10_ict", "cifar10_ect", "cifar10_sct", "imagenet64_ect"):
    assert name in RECIPES


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_and_its_smoke_variant_validate(name):
  full, smoke = load(name, ""), load(name, "smoke")
  config_lib.validate(full)
  config_lib.validate(smoke)
  # Smoke is small: few steps (the methods' own tests train them end to end).
  assert smoke.train.num_steps <= 50
  assert smoke.train.num_steps < full.train.num_steps
  assert smoke.objective.name == full.objective.name
  with pytest.raises(ValueError, match="smoke"):
    load(name, "no_such_arg")
