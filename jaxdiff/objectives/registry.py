"""Method name -> the `Objective` class that implements it.

A method module registers its class with `@register("name")`; the package
`jaxdiff.objectives` imports every method module, so importing it fills the
registry. Everything generic (the config, the trainer, the samplers) reaches a
method only through here and the `Objective` contract.
"""
from __future__ import annotations

from typing import Any, Callable

from jaxdiff.errors import ConfigError
from jaxdiff.objectives.base import ApplyFn, NoiseSampler, Objective

_METHODS: dict[str, type[Objective]] = {}


def register(name: str) -> Callable[[type[Objective]], type[Objective]]:
  def add(cls: type[Objective]) -> type[Objective]:
    if name in _METHODS:
      raise ValueError(f"objective {name!r} is registered twice ({_METHODS[name]} and {cls}).")
    cls.name = name
    _METHODS[name] = cls
    return cls
  return add


def names() -> tuple[str, ...]:
  return tuple(sorted(_METHODS))


def get(name: str) -> type[Objective]:
  if name not in _METHODS:
    raise ConfigError(f"config.objective.name={name!r} is not allowed; choose one of {names()}.")
  return _METHODS[name]


def build(config, apply_fn: ApplyFn, example_shape, *, mesh=None,
          noise_sampler: NoiseSampler | None = None) -> Objective:
  """The objective `config.objective.name` names, with `noise_sampler` (default: the
  method's own full distribution) and the mesh its train step runs on."""
  method = get(config.objective.name)
  if noise_sampler is None:
    noise_sampler = method.noise_sampler(config)
  objective = method.from_config(config, apply_fn, tuple(example_shape), noise_sampler,
                                 mesh=mesh)
  objective.mesh = mesh
  return objective


def config_sections() -> dict[str, dict[str, Any]]:
  """Every method's config keys, merged by section. Methods sharing a section (the
  consistency family) must agree on a key's default."""
  merged: dict[str, dict[str, Any]] = {}
  for name in names():
    for section, keys in _METHODS[name].config_sections().items():
      into = merged.setdefault(section, {})
      for key, value in keys.items():
        if key in into and into[key] != value:
          raise ValueError(f"config.{section}.{key}: methods disagree on its default "
                           f"({into[key]!r} vs {value!r} from {name!r}).")
        into[key] = value
  return merged
