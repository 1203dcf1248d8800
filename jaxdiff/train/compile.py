"""Ahead-of-time compilation of the train step: one executable per static key, logged.

A run's static keys are its curriculum stages (their cluster masks) times the
objective's update variants (ACT's lazy-R1 step). `StepCompiler` lowers and
compiles each key's step for the mesh exactly once and records how long it
took, so tests and logs can prove nothing recompiles inside a stage;
`compile_report` reads XLA's per-device memory and FLOP estimates of one.
"""
from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import jax
from absl import logging
from jax.sharding import Mesh

from jaxdiff import parallel


class StepCompiler:
  """One ahead-of-time compiled train step per static key (the curriculum stage).

  `build(key)` returns the pure step for that key; compiling happens at most
  once per key, and `compile_log` records (key, seconds) for every compilation
  so tests and logs can prove nothing recompiles inside a stage.
  """

  def __init__(self, build: Callable[[Any], Callable], mesh: Mesh, state_sharding,
               abstract_state, abstract_batch: dict):
    self._build = build
    self._mesh = mesh
    self._state_sharding = state_sharding
    self._abstract_state = abstract_state
    self._abstract_batch = abstract_batch
    self._compiled: dict[Any, Any] = {}
    self.compile_log: list[tuple[Any, float]] = []

  def __call__(self, key):
    if key not in self._compiled:
      start = time.perf_counter()
      batch_sharding = {k: parallel.batch_sharding(self._mesh, len(v.shape))
                        for k, v in self._abstract_batch.items()}
      jitted = jax.jit(self._build(key),
                       in_shardings=(self._state_sharding, batch_sharding),
                       out_shardings=(self._state_sharding, parallel.replicated(self._mesh)),
                       donate_argnums=(0,))
      self._compiled[key] = jitted.lower(self._abstract_state, self._abstract_batch).compile()
      seconds = time.perf_counter() - start
      self.compile_log.append((key, seconds))
      logging.info("compiled train step for %s in %.1f s", describe(key), seconds)
    return self._compiled[key]

  def drop_except(self, keep) -> None:
    """Frees the executables of every key not in `keep` (curriculum stages left behind:
    stages only move forward, and a dropped key would compile again if it came back)."""
    keep = set(keep)
    for key in [k for k in self._compiled if k not in keep]:
      del self._compiled[key]

  @property
  def num_compiled(self) -> int:
    return len(self._compiled)


class VariantKey(NamedTuple):
  """The static key of a step for objectives with several update variants (ACT's R1)."""
  stage: Any    # the curriculum stage's mask; None without the curriculum
  variant: Any  # one of the objective's `step_variants`


def step_key(stage, variant=None):
  """The compile key of (stage, variant): the bare stage key when there is one variant."""
  return stage if variant is None else VariantKey(stage, variant)


def split_key(key) -> tuple[Any, Any]:
  return (key.stage, key.variant) if isinstance(key, VariantKey) else (key, None)


def describe(key) -> str:
  if isinstance(key, VariantKey):
    stage = "all noise levels" if key.stage is None else describe(key.stage)
    return f"{stage}, variant {key.variant}"
  if isinstance(key, tuple) and key and isinstance(key[0], bool):
    return f"stage mask {''.join('1' if b else '0' for b in key)}"
  return str(key)


def compile_report(compiled) -> dict:
  """Per-device memory (bytes) and cost estimates of one compiled executable."""
  out: dict[str, Any] = {}
  mem = compiled.memory_analysis()
  if mem is not None:
    for field in ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                  "temp_size_in_bytes", "generated_code_size_in_bytes"):
      out[field] = int(getattr(mem, field, 0) or 0)
    # Donated state aliases its output, so it counts once.
    out["peak_bytes_estimate"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                                  - out["alias_size_in_bytes"] + out["temp_size_in_bytes"])
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else None
  if cost:
    out["flops"] = float(cost.get("flops", float("nan")))
    out["bytes_accessed"] = float(cost.get("bytes accessed", float("nan")))
  return out
