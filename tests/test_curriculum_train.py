"""The difficulty curriculum inside the trainer: compilation, logging, resume, equivalence.

Toy 2-D MLP runs (compile in seconds) for the integration; one digits UNet
smoke run of configs/digits_curriculum.py and one smoke run of its
`--mode=analyze` study.
"""
import functools
import json
import os

import jax
import numpy as np
import pytest

from jaxdiff.objectives import base
from jaxdiff.curriculum import runtime
from jaxdiff.train.experiment import Experiment
from jaxdiff import checkpoint
from jaxdiff import config as config_lib
from jaxdiff import parallel
from jaxdiff.curriculum import settings as curriculum_settings
from jaxdiff.train import loop
from jaxdiff.train import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"


def load_config(name: str, arg: str = "smoke"):
  return config_lib.load_config(f"{name}:{arg}")


def toy_config(num_steps=6, **curriculum):
  c = load_config("toy2d_edm")
  c.train.loss_buckets = 0
  c.train.num_steps = num_steps
  c.train.log_every = 1
  c.train.ckpt_every = 1000
  c.sample.num_steps = 2
  c.sample.num_samples = 16
  c.eval.num_samples = 16
  for key, value in curriculum.items():
    c.curriculum[key] = value
  return c


def mesh_of(n: int):
  import ml_collections
  return parallel.make_mesh(ml_collections.ConfigDict({"data": n, "fsdp": 1}),
                            devices=jax.devices()[:n])


def metric_rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def stage_per_step(workdir):
  """{step: curriculum/stage} from metrics.jsonl (one row per step at least)."""
  out = {}
  for row in metric_rows(workdir):
    if "curriculum/stage" in row:
      out.setdefault(row["step"], set()).add(row["curriculum/stage"])
  assert all(len(v) == 1 for v in out.values()), out
  return {k: int(v.pop()) for k, v in out.items()}


def restore(workdir, config):
  exp = Experiment(config, mesh=mesh_of(2))
  ck = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  state, host, step = ck.restore_latest(exp.abstract_state)
  ck.close()
  return step, jax.device_get(state.params), host


def assert_trees_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


class TraceCounter:
  """Counts jaxpr traces of functions named `train_step` (jax.monitoring events).

  A trace precedes every compilation, including persistent-cache hits, so the
  count is the number of compilations the trainer asked for.
  """

  def __init__(self):
    self.count = 0

  def __call__(self, event, duration, **kwargs):
    if event == TRACE_EVENT and kwargs.get("fun_name") == "train_step":
      self.count += 1

  def __enter__(self):
    jax.monitoring.register_event_duration_secs_listener(self)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self)


# ----------------------------------------------------------------- compilation


@pytest.mark.parametrize("precompile", ["next", "all"])
def test_one_compilation_per_stage_and_stage_logged_every_step(tmp_path, monkeypatch,
                                                               precompile):
  """4 clusters x 3 steps (fixed pacing), then 2 steps at the full distribution."""
  traces_per_build = []
  original = step_lib.make_train_step

  def once_per_stage(*args, **kwargs):
    # chex.assert_max_traces-style, per built step function: chex's own
    # counter is keyed by source and call stack, which all stages share (and
    # which differs between the loop and the background compile thread).
    fn = original(*args, **kwargs)
    count = [0]
    traces_per_build.append(count)

    @functools.wraps(fn)
    def counted(*a, **k):
      count[0] += 1
      assert count[0] == 1, "a stage's train step was traced twice"
      return fn(*a, **k)
    return counted

  monkeypatch.setattr(step_lib, "make_train_step", once_per_stage)
  c = toy_config(num_steps=14, enabled=True, num_clusters=4, pacing="fixed",
                 steps_per_stage=3, precompile=precompile)
  with TraceCounter() as traces:
    summary = loop.train(c, str(tmp_path), mesh=mesh_of(2))
  masks = [curriculum_settings.mask_for_stage(c.curriculum, s) for s in (1, 2, 3, 4)]
  keys = [k for k, _ in summary["compilations"]]
  assert sorted(keys) == sorted(str(m) for m in masks)  # each stage exactly once
  assert traces.count == 4 and [c[0] for c in traces_per_build] == [1, 1, 1, 1]
  # Every step logs the stage it trained on.
  stages = stage_per_step(tmp_path)
  assert stages == {s: 1 + min(3, (s - 1) // 3) for s in range(1, 15)}


def test_precompile_compiles_ahead_and_once(monkeypatch):
  """`next` queues only stage n+1, `all` every later stage; waiting never recompiles."""
  c = toy_config(enabled=True, num_clusters=3, pacing="fixed", steps_per_stage=1,
                 precompile="next")
  cur = runtime.Curriculum(c.curriculum)
  assert cur.keys_to_precompile() == [curriculum_settings.mask_for_stage(c.curriculum, 2)]
  c.curriculum.precompile = "all"
  assert runtime.Curriculum(c.curriculum).keys_to_precompile() == [
      curriculum_settings.mask_for_stage(c.curriculum, s) for s in (2, 3)]
  c.curriculum.precompile = "none"
  assert runtime.Curriculum(c.curriculum).keys_to_precompile() == []
  assert runtime.Curriculum(toy_config().curriculum).keys_to_precompile() == []

  import threading
  calls, release = [], threading.Event()

  def slow_compile(key):
    calls.append((key, threading.current_thread().name))
    release.wait(5)
    return f"compiled {key}"

  pre = runtime.StagePrecompiler(slow_compile)
  pre.prefetch(["a", "b"])
  pre.prefetch(["a"])  # queued already: not again
  release.set()
  assert pre("b") == "compiled b" and pre("a") == "compiled a"
  assert pre("c") == "compiled c"  # not queued: compiled on demand, in this thread
  pre.close()
  assert [k for k, _ in calls] == ["a", "b", "c"]
  assert calls[0][1].startswith("jaxdiff-precompile")
  assert calls[2][1] == threading.current_thread().name


# ----------------------------------------------------------------- equivalence


def test_disabled_and_single_cluster_are_bit_identical_to_baseline(tmp_path):
  base = toy_config()
  loop.train(base, str(tmp_path / "base"), mesh=mesh_of(2))
  # Disabled: the other curriculum keys must not matter at all.
  off = toy_config(num_clusters=3, pacing="fixed", steps_per_stage=1, order="random",
                   precompile="all")
  loop.train(off, str(tmp_path / "off"), mesh=mesh_of(2))
  # Enabled with one cluster: stage 1 is already the full distribution.
  one = toy_config(enabled=True, num_clusters=1, pacing="patience", window=1, tau=0)
  summary = loop.train(one, str(tmp_path / "one"), mesh=mesh_of(2))
  assert len(summary["compilations"]) == 1
  _, p_base, _ = restore(tmp_path / "base", base)
  _, p_off, _ = restore(tmp_path / "off", off)
  _, p_one, host = restore(tmp_path / "one", one)
  assert_trees_equal(p_off, p_base)
  assert_trees_equal(p_one, p_base)
  assert host["curriculum"]["stage"] == 1
  assert "curriculum/stage" not in metric_rows(tmp_path / "off")[0]
  # ... and the curriculum does change training when it has something to do.
  two = toy_config(enabled=True, num_clusters=2, pacing="fixed", steps_per_stage=100)
  loop.train(two, str(tmp_path / "two"), mesh=mesh_of(2))
  _, p_two, _ = restore(tmp_path / "two", two)
  assert any(not np.array_equal(x, y)
             for x, y in zip(jax.tree.leaves(p_two), jax.tree.leaves(p_base)))


def test_uniform_kind_is_refused_for_continuous_sigma():
  c = toy_config(enabled=True, kind="uniform")
  with pytest.raises(config_lib.ConfigError,
                     match=r"curriculum\.kind='uniform'.*continuous lognormal.*--config\.curriculum\.kind=lognormal"):
    Experiment(c, mesh=mesh_of(1))
  # Disabled, the kind is irrelevant and accepted.
  runtime.Curriculum.check_config(toy_config(kind="uniform"), base.LognormalSampler())


def test_precompile_and_study_keys_are_validated():
  cfg = curriculum_settings.default_curriculum_config()
  cfg.precompile = "later"
  with pytest.raises(ValueError, match=r"curriculum\.precompile = 'later'.*'next'"):
    curriculum_settings.validate_curriculum_config(cfg)
  cfg = curriculum_settings.default_curriculum_config()
  cfg.study.kl_timesteps = (0, 5)
  with pytest.raises(ValueError, match=r"curriculum\.study\.kl_timesteps"):
    curriculum_settings.validate_curriculum_config(cfg)
  cfg = curriculum_settings.default_curriculum_config()
  cfg.study.num_step = 3
  with pytest.raises(ValueError, match="num_step"):
    curriculum_settings.validate_curriculum_config(cfg)


# ----------------------------------------------------------------- resume


def test_resume_mid_stage_equals_uninterrupted(tmp_path):
  """Patience pacing, stopped at step 5 inside a stage with live counters."""
  kw = dict(enabled=True, num_clusters=4, pacing="patience", window=2, tau=2, cap=4)
  full = toy_config(num_steps=12, **kw)
  loop.train(full, str(tmp_path / "straight"), mesh=mesh_of(2))
  loop.train(toy_config(num_steps=5, **kw), str(tmp_path / "resumed"), mesh=mesh_of(2))
  _, _, host5 = restore(tmp_path / "resumed", full)
  mid = host5["curriculum"]
  # A real mid-stage stop: not at a stage start, a half-filled window.
  assert 1 <= mid["stage"] < 4 and mid["steps_in_stage"] > 0 and mid["window_count"] == 1
  summary = loop.train(full, str(tmp_path / "resumed"), mesh=mesh_of(2))
  assert summary["step"] == 12
  straight, resumed = stage_per_step(tmp_path / "straight"), stage_per_step(tmp_path / "resumed")
  assert resumed == straight and len(straight) == 12
  assert len(set(straight.values())) >= 3  # the run did move through stages
  step_a, a, host_a = restore(tmp_path / "straight", full)
  step_b, b, host_b = restore(tmp_path / "resumed", full)
  assert step_a == step_b == 12
  assert_trees_equal(a, b)
  assert host_a["curriculum"] == host_b["curriculum"]


def test_host_reads_each_step_one_step_late(tmp_path, monkeypatch):
  """While step s runs the host reads only step s - 1's scalars: no per-step device sync."""
  reads, original_step, original_observe = [], loop.Trainer.train_step, loop.Trainer.observe

  def train_step(self):
    self.in_step = True
    try:
      return original_step(self)
    finally:
      self.in_step = False

  def observe(self, step, metrics, pacer=None):
    if getattr(self, "in_step", False):
      assert metrics is not self.metrics, "read the metrics of the step just dispatched"
      reads.append((self.step - 1, step))
    return original_observe(self, step, metrics, pacer)

  monkeypatch.setattr(loop.Trainer, "train_step", train_step)
  monkeypatch.setattr(loop.Trainer, "observe", observe)
  c = toy_config(num_steps=6, enabled=True, num_clusters=3, pacing="patience", window=1,
                 tau=0, cap=2)
  loop.train(c, str(tmp_path), mesh=mesh_of(2))
  assert reads == [(s, s - 1) for s in range(1, 6)]
  assert len(set(stage_per_step(tmp_path).values())) >= 2  # the pacer still moved


# ----------------------------------------------------------------- digits recipe


def test_digits_curriculum_smoke_end_to_end(tmp_path):
  c = load_config("digits_curriculum")
  assert c.curriculum.enabled and c.curriculum.pacing == "patience"
  full = load_config("digits_curriculum", "")
  assert full.curriculum.num_clusters == 20 and full.curriculum.cap * 19 < full.train.num_steps
  summary = loop.train(c, str(tmp_path), mesh=mesh_of(2))
  assert summary["step"] == 6 and np.isfinite(summary["quality"]["value"])
  assert len(summary["compilations"]) == 2  # two clusters, two stages
  stages = stage_per_step(tmp_path)
  assert sorted(stages) == list(range(1, 7)) and stages[1] == 1 and stages[6] == 2


def test_analyze_smoke_writes_tables_and_plots(tmp_path):
  from jaxdiff.commands import analyze
  c = load_config("digits_curriculum")
  summary = analyze.run(c, str(tmp_path), mesh=mesh_of(2))
  out = tmp_path / "analysis"
  for name in ("kl.csv", "kl.md", "kl.png", "convergence.csv", "convergence.md",
               "convergence.png", "summary.json", "report.md"):
    assert (out / name).exists(), name
  kl = summary["kl"]
  assert kl["closed_form_strictly_decreasing"] and kl["dimension"] == 64
  rows = {r["t"]: r for r in kl["rows"]}
  # The hand-computed value (docs/curriculum.md#the-difficulty-study) at t = 1 for x0^2 = 0.25.
  np.testing.assert_allclose(rows[1]["kl_closed_x0sq_0.25"], 0.121, rtol=5e-3)
  assert rows[1]["kl_marginal_mc"] > rows[999]["kl_marginal_mc"]
  conv = summary["convergence"]["rows"]
  assert len(conv) == 2 and all(np.isfinite(r["loss_final"]) for r in conv)
  assert all(r["iters_first"] in (0, 2, 4) for r in conv)


# ------------------------------------------------- the monitored loss: newest cluster


def test_monitored_metrics_average_the_newest_cluster_only():
  from jaxdiff.objectives.ddpm import DiscreteTimeSampler
  newest = DiscreteTimeSampler(num_timesteps=10, kind="uniform").restrict(
      (False, True, False, False, False))  # timesteps 2 and 3
  t = np.array([0, 2, 3, 3, 9], np.float32)
  loss = np.array([10.0, 1.0, 2.0, 3.0, 50.0], np.float32)
  out = step_lib.monitored_metrics(loss, t, newest)
  np.testing.assert_allclose(out["loss_newest_cluster"], 2.0)
  assert float(out["newest_cluster_count"]) == 3


def test_patience_on_the_newest_cluster_trains_and_reports_it(tmp_path):
  c = toy_config(num_steps=8, enabled=True, num_clusters=3, pacing="patience", window=1,
                 tau=0, monitor="newest_cluster", precompile="none")
  summary = loop.train(c, str(tmp_path), mesh=mesh_of(2))
  rows = metric_rows(tmp_path)
  stages = stage_per_step(tmp_path)
  assert max(stages.values()) >= 2  # the pacer moved on the monitored loss
  with_newest = [r for r in rows if "newest_cluster_count" in r]
  # Stage 1's only cluster is the whole batch: no extra metric there, only in later stages.
  assert with_newest and all(stages[r["step"]] >= 2 for r in with_newest)
  for r in with_newest:
    assert 0 <= r["newest_cluster_count"] <= c.data.batch_size
  assert len(summary["compilations"]) == len(set(stages.values()))
