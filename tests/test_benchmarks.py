"""The benchmark harness (benchmarks/): builds the same network in both frameworks, runs.

Nothing here times anything or asserts a speed: the numbers come from
`python -m benchmarks.run`. These tests check that the harness compares like
with like (parameter counts, configs that validate, FSDP state division) and
that one tiny end-to-end run writes its table.
"""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import common  # noqa: E402
from benchmarks import memory  # noqa: E402
from jaxdiff import config as config_lib  # noqa: E402
from jaxdiff import models  # noqa: E402


def jax_param_count(size: str) -> int:
  c = common.make_config(size)
  s = common.SIZES[size]
  model = models.build_model(c.model, image_shape=(s["image_size"], s["image_size"],
                                                   s["channels"]))
  shapes = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "dropout": jax.random.key(0)},
      jnp.zeros((1, s["image_size"], s["image_size"], s["channels"])), jnp.zeros((1,)),
      None, None))
  return models.count_params(shapes["params"])


@pytest.mark.parametrize("size", ["tiny", "ci", "cifar10"])
def test_torch_reference_has_jaxdiff_parameter_count(size):
  pytest.importorskip("torch")
  from benchmarks import torch_reference as tr
  s = common.SIZES[size]
  net = tr.SongUNetDDPMpp(s["image_size"], s["channels"], s["channels"],
                          model_channels=s["model_channels"], channel_mult=s["channel_mult"],
                          num_blocks=s["num_blocks"], attn_resolutions=s["attn_resolutions"],
                          augment_dim=s["augment_dim"])
  assert tr.count_params(net) == jax_param_count(size)
  if size == "cifar10":
    assert tr.count_params(net) == 55_733_891  # EDM's own count of its CIFAR-10 DDPM++


def test_torch_reference_matches_edm_cifar10_count_with_augment_labels():
  pytest.importorskip("torch")
  from benchmarks import torch_reference as tr
  # EDM's CIFAR-10 DDPM++ (augment_dim 9): 55,733,891 parameters (EDM's own count).
  assert tr.count_params(tr.SongUNetDDPMpp(32, 3, 3, augment_dim=9)) == 55_733_891


def test_torch_reference_trains_one_step():
  torch = pytest.importorskip("torch")
  from benchmarks import torch_reference as tr
  s = common.SIZES["tiny"]
  trainer = tr.build(s["image_size"], s["channels"], model_channels=s["model_channels"],
                     channel_mult=s["channel_mult"], num_blocks=s["num_blocks"],
                     attn_resolutions=s["attn_resolutions"], dropout=0.1)
  before = [p.detach().clone() for p in trainer.params]
  images = torch.rand(4, s["channels"], s["image_size"], s["image_size"]) * 2 - 1
  loss = float(trainer.step(images))
  assert np.isfinite(loss) and loss > 0
  assert any(not torch.equal(a, b) for a, b in zip(before, trainer.params))
  # EMA (decay 0.999) moved a little towards the new parameters, not onto them.
  moved = [(e - b).abs().max() for e, b in zip(trainer.ema, before)]
  assert max(moved) > 0
  assert all(torch.allclose(e, b, atol=1e-2) for e, b in zip(trainer.ema, before))


def test_torch_reference_sdpa_equals_explicit_attention():
  torch = pytest.importorskip("torch")
  from benchmarks import torch_reference as tr
  torch.manual_seed(0)
  block = tr.UNetBlock(16, 16, 32, attention=True, use_sdpa=True).eval()
  # Non-trivial attention: EDM initialises proj near zero, which would hide a bug.
  torch.nn.init.normal_(block.proj.weight)
  x, emb = torch.randn(2, 16, 4, 4), torch.randn(2, 32)
  with torch.no_grad():
    fast = block(x, emb)
    block.use_sdpa = False
    slow = block(x, emb)
  torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size,recipe", [("cifar10", "cifar10_edm"),
                                         ("imagenet64", "imagenet64_edm")])
def test_benchmark_sizes_mirror_the_recipes(size, recipe):
  import importlib.util
  spec = importlib.util.spec_from_file_location(recipe, os.path.join(ROOT, "configs",
                                                                     recipe + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("")
  s = common.SIZES[size]
  assert (c.data.image_size, c.data.channels, c.data.num_classes) == (
      s["image_size"], s["channels"], s["num_classes"])
  for key in ("model_channels", "num_blocks", "dropout", "augment_dim"):
    assert c.model[key] == s[key], key
  assert tuple(c.model.channel_mult) == s["channel_mult"]
  assert tuple(c.model.attn_resolutions) == s["attn_resolutions"]
  assert common.RECIPE_BATCH[size] == c.data.batch_size


@pytest.mark.parametrize("objective", ["edm", "stf"])
@pytest.mark.parametrize("size", ["ci", "cifar10", "imagenet64"])
def test_benchmark_configs_validate(size, objective):
  c = common.make_config(size, objective=objective, stf__reference_size=256)
  config_lib.validate(c, num_devices=1)


def test_fsdp_divides_state_memory_per_device():
  """Shardings alone (no compile): fsdp=8 holds ~1/8 of params+EMA+Adam per device."""
  devices = jax.devices()[:8]
  assert len(devices) == 8
  per_device = {}
  for fsdp in (1, 8):
    exp = common.experiment(common.make_config("ci", 32), common.mesh_of(devices, fsdp=fsdp))
    per_device[fsdp] = memory.state_bytes_per_device(exp)
  full = sum(per_device[1].values())
  sharded = sum(per_device[8].values())
  # Every parameter is replicated without FSDP: params, EMA, Adam's two moments.
  assert per_device[1]["params"] == per_device[1]["ema_params"]
  assert per_device[1]["opt_state"] >= 2 * per_device[1]["params"]
  # Small leaves (biases, norms) stay replicated, so a little under 8x.
  assert 7.0 < full / sharded <= 8.0


def test_synthetic_dataset_is_deterministic_and_in_range():
  ds = common.SyntheticImages((4, 4, 3), num_classes=10)
  a, b = ds.get(np.arange(5, 9)), ds.get(np.arange(5, 9))
  np.testing.assert_array_equal(a["image"], b["image"])
  assert a["image"].shape == (4, 4, 4, 3) and a["image"].min() >= -1 and a["image"].max() <= 1
  np.testing.assert_array_equal(a["label"], np.arange(5, 9) % 10)


def test_run_tiny_end_to_end_writes_table(tmp_path):
  from benchmarks import run
  report = run.main(["--sections", "peak,train,compile,input,checkpoint", "--sizes", "tiny",
                     "--iters", "1", "--reps", "1", "--cache-dir", "keep",
                     "--out-dir", str(tmp_path), "--name", "t"])
  errors = [r for r in report.rows if r["item"] == "error"]
  assert not errors, errors
  md = (tmp_path / "t.md").read_text()
  assert "| train |" in md and "jaxdiff" in md
  data = json.loads((tmp_path / "t.json").read_text())
  items = [r["item"] for r in data["rows"]]
  assert any("achieved FLOP/s" in i for i in items)
  assert any("async save" in i for i in items)
  # Compile time per stage: the EDM step and a curriculum stage, cold and from the cache.
  compile_rows = {r["item"]: r["value"] for r in data["rows"] if r["section"] == "compile"}
  assert set(compile_rows) == {"tiny edm", "tiny curriculum stage 10"}, compile_rows
  # --cache-dir keep: the first compile may itself come from the test cache, hence "first".
  assert all(v.startswith("first ") and ", cached " in v for v in compile_rows.values())
  try:
    import torch  # noqa: F401
    assert any("jaxdiff/pytorch" in i for i in items)
  except ImportError:
    assert not any("pytorch" in i for i in items)


@pytest.mark.slow  # `python -m benchmarks.run --quick` (README, "Performance") runs this section
def test_overheads_flops_only_counts_each_variant_against_edm(tmp_path):
  """--flops-only: one row per variant from XLA's FLOP count; the curriculum stage
  changes only the noise-level sampler, so its step must cost (almost) exactly EDM's."""
  from benchmarks import run
  report = run.main(["--sections", "overheads", "--sizes", "tiny", "--no-torch",
                     "--flops-only", "--stf-sizes", "64", "--cache-dir", "keep",
                     "--out-dir", str(tmp_path), "--name", "t"])
  rows = {r["item"]: r for r in report.rows if r["section"] == "overheads"}
  assert not any("ms/step" in r["value"] for r in rows.values())  # no timing was done
  assert "overheads" not in report.data
  flops = report.data["overhead_flops"]
  assert 0 <= flops["curriculum"] - flops["EDM"] < 1e-4 * flops["EDM"], flops
  assert "curriculum (FLOPs)" in rows
  # The consistency objectives add a stop-gradient forward pass of the network.
  for name in ("ECT", "SCT"):
    assert 0.2 < flops[name] / flops["EDM"] - 1 < 0.6, (name, flops)
  assert 0 < flops["STF n=64"] / flops["EDM"] - 1 < 0.01, flops



def test_device_check_dry_run_writes_every_row(tmp_path):
  """benchmarks/device_check.py on CPU at the tiny size: every section it owns runs and
  writes its rows (the harness sections it borrows, compile and overheads, are tested
  above through benchmarks/run.py)."""
  from benchmarks import device_check
  sections = "env,peak,train,bf16,tests,quality,sampling,memory,torch_compile"
  check = device_check.main(["--dry-run", "--sections", sections, "--out", str(tmp_path)])
  rows = check.report.rows
  errors = [r for r in rows if r["item"] in ("error", "skipped")]
  assert not errors, errors
  assert {r["section"] for r in rows} == set(sections.split(","))
  data = json.loads((tmp_path / "device_check.json").read_text())
  assert data["rows"] == rows and (tmp_path / "device_check.md").exists()
  by_item = {r["item"]: r for r in rows}
  assert by_item["jaxdiff tiny fp32 batch 8"]["value"].endswith("FLOP/s")
  assert "passed" in next(r["value"] for r in rows if r["section"] == "tests")
  assert "sliced" in next(r["value"] for r in rows if r["section"] == "quality")
  # The memory levers: remat keeps less for the backward pass, microbatches lower the peak.
  levers = data["levers"]
  assert levers["edm remat=full"]["kept_for_backward"] < \
      levers["edm remat=none"]["kept_for_backward"]
  assert levers["edm microbatches=4"]["peak_bytes_estimate"] < \
      levers["edm remat=none"]["peak_bytes_estimate"]
  assert int(by_item["tiny largest fp32 batch in 80 GB"]["value"]) > 1000
  if device_check._torch_device():
    assert "pytorch eager tiny fp32 batch 8" in by_item
    assert any(r["section"] == "torch_compile" and "img/s" in r["value"] for r in rows)
