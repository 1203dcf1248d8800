"""FID: Fréchet distance, Inception (random weights), weight files, sharded statistics, eval mode."""
import collections
import io
import json
import os
import pickle
import struct
import sys
import zipfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.linalg

from jaxdiff import config as config_lib
from jaxdiff import parallel, weights
from jaxdiff.errors import WeightsFileError
from jaxdiff.data import pipeline
from jaxdiff.evaluation import fid, frechet_distance, inception
from jaxdiff.train import samples

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RES = 75  # the smallest input InceptionV3 takes: fast on CPU (FID proper uses 299)


def mesh_of(n):
  return parallel.make_mesh(ml_collections.ConfigDict({"data": n, "fsdp": 1}),
                            devices=jax.devices()[:n])


@pytest.fixture(scope="module")
def params():
  return inception.random_params(0)


@pytest.fixture(scope="module")
def features_fn():
  """[-1, 1] images -> features, one device, jitted once for the module (batches of 8)."""
  model = inception.make_model(RES)
  return jax.jit(lambda p, x: model.apply({"params": p}, fid.to_uint8_values(x)))


# ----------------------------------------------------------------- Fréchet distance

def scipy_fid(mu1, s1, mu2, s2):
  """pytorch-fid's formula in float64: sqrtm of the product, eps retry, real part."""
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  if not np.isfinite(covmean).all():
    off = np.eye(len(s1)) * 1e-6
    covmean = scipy.linalg.sqrtm((s1 + off) @ (s2 + off))
  covmean = covmean.real
  d = mu1 - mu2
  return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_matches_scipy_full_rank():
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal((400, 16)), rng.standard_normal((400, 16)) @ rng.random((16, 16))
  mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0) + 0.3, np.cov(b, rowvar=False)
  np.testing.assert_allclose(frechet_distance(mu1, s1, mu2, s2), scipy_fid(mu1, s1, mu2, s2),
                             rtol=1e-9)
  assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_rank_deficient_covariances():
  rng = np.random.default_rng(1)
  d = 32
  a = rng.standard_normal((10, d))           # 10 samples in 32 dims: rank 9
  b = rng.standard_normal((12, d)) * 1.5
  mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
  assert np.linalg.matrix_rank(s1) == 9
  ours = frechet_distance(mu1, s1, mu2, s2)
  # Exact float64 reference from the data: with S1 = A^T A/(n1-1), S2 = B^T B/(n2-1)
  # (centred A, B), the eigenvalues of S1 S2 are the squared singular values of
  # A B^T / sqrt((n1-1)(n2-1)), so tr((S1 S2)^1/2) is their sum: no matrix root of a
  # singular matrix is needed.
  ca, cb = a - a.mean(0), b - b.mean(0)
  tr = scipy.linalg.svdvals(ca @ cb.T).sum() / np.sqrt((len(a) - 1) * (len(b) - 1))
  ref = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * tr)
  np.testing.assert_allclose(ours, ref, rtol=1e-7)  # sqrt of rounding-level eigenvalues
  # pytorch-fid's sqrtm route is itself inaccurate here (singular product): close only.
  np.testing.assert_allclose(ours, scipy_fid(mu1, s1, mu2, s2), rtol=1e-3)
  # Both singular and sharing a subspace: still finite and >= 0; zero against itself.
  assert np.isfinite(ours) and ours > 0
  assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-7)


def test_running_sums_equal_numpy_statistics():
  rng = np.random.default_rng(2)
  f = rng.standard_normal((50, 6)) * 3 + 1
  stats = fid.FeatureStats.zeros(6)
  stats.add(f[:20].sum(0), f[:20].T @ f[:20], 20)
  stats = stats.merge(fid.FeatureStats.from_features(f[20:]))
  mu, sigma = stats.mean_cov()
  np.testing.assert_allclose(mu, f.mean(0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(f, rowvar=False), rtol=1e-10)


def test_reference_stats_files(tmp_path):
  mu, sigma = np.arange(2048.0), np.eye(2048)
  fid.save_stats(str(tmp_path / "ref.npz"), mu, sigma, dataset="x")
  got_mu, got_sigma = fid.load_stats(str(tmp_path / "ref.npz"))
  np.testing.assert_array_equal(got_mu, mu)
  np.testing.assert_array_equal(got_sigma, sigma)
  np.savez(tmp_path / "bad.npz", mu=np.zeros(10), sigma=np.eye(10))
  with pytest.raises(ValueError, match=r"expected \(2048,\) and \(2048, 2048\)"):
    fid.load_stats(str(tmp_path / "bad.npz"))
  with pytest.raises(FileNotFoundError, match="reference_stats"):
    fid.load_stats(str(tmp_path / "missing.npz"))


# ----------------------------------------------------------------- Inception

def test_tf1_resize_matches_the_grid_sample_definition():
  """EDM's detector: affine_grid shifted by 1/W - 1/299, grid_sample bilinear, border."""
  for w, out in ((32, 299), (8, 75), (400, 299)):
    m = inception.tf1_bilinear_matrix(w, out)
    xn = (2 * np.arange(out) + 1) / out - 1 + (1 / w - 1 / out)   # normalised input coordinate
    p = np.clip(((xn + 1) * w - 1) / 2, 0, w - 1)                  # align_corners=False, border
    ref = np.zeros((out, w))
    lo = np.floor(p).astype(int)
    hi = np.minimum(lo + 1, w - 1)
    ref[np.arange(out), lo] += 1 - (p - lo)
    ref[np.arange(out), hi] += p - lo
    np.testing.assert_allclose(m, ref, atol=1e-6)
  np.testing.assert_allclose(inception.tf1_bilinear_matrix(2, 4),
                             [[1, 0], [.5, .5], [0, 1], [0, 1]])


def test_inception_random_weights_shapes_and_determinism(params, features_fn):
  # [8, 8, 8, 3]: the shapes every Inception program in this file uses, so the compilation
  # cache serves each program once (the smoke recipe's FID below uses the same).
  x = np.random.default_rng(0).uniform(-1, 1, (8, 8, 8, 3)).astype(np.float32)
  a = np.asarray(features_fn(params, x))
  b = np.asarray(features_fn(params, x))
  assert a.shape == (8, inception.FEATURE_DIM) and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)
  assert np.all(a >= 0) and a.std() > 0       # post-ReLU means, not constant
  single = np.asarray(features_fn(params, np.repeat(x[1:2], 8, axis=0)))[0]
  np.testing.assert_allclose(single, a[1], rtol=1e-5, atol=1e-6)  # no cross-image mixing
  assert not np.allclose(a[0], a[1])
  with pytest.raises(ValueError, match="below the minimum 75"):
    inception.make_model(64)
  assert sum(int(np.prod(s)) for s in inception.param_shapes().values()) == 21_820_000


def test_npz_round_trip_and_converter(params, tmp_path):
  sd = inception.state_dict_from_params(params)
  assert sd["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)   # torch OIHW
  assert sd["Mixed_7c.branch_pool.bn.running_var"].shape == (192,)
  assert len(sd) == 94 * 5
  sd_extra = dict(sd, **{"fc.weight": np.zeros((1008, 2048), np.float32),
                         "Conv2d_1a_3x3.bn.num_batches_tracked": np.array(0)})
  inception.save_npz(str(tmp_path / "full.npz"), sd_extra)
  inception.convert(str(tmp_path / "full.npz"), str(tmp_path / "clean.npz"))
  back = inception.load_params(str(tmp_path / "clean.npz"))
  for (pa, a), (pb, b) in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                              jax.tree_util.tree_flatten_with_path(back)[0]):
    assert pa == pb
    np.testing.assert_array_equal(a, b)
  with np.load(tmp_path / "clean.npz") as z:
    assert "fc.weight" not in z.files and str(z["__format__"]) == inception.NPZ_FORMAT


def test_wrong_or_truncated_weight_files_fail_naming_the_format(params, tmp_path):
  sd = inception.state_dict_from_params(params)
  inception.save_npz(str(tmp_path / "ok.npz"), sd)
  raw = open(tmp_path / "ok.npz", "rb").read()
  (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 3])
  with pytest.raises(WeightsFileError, match="pt_inception-2015-12-05"):
    inception.load_params(str(tmp_path / "cut.npz"))
  missing = {k: v for k, v in sd.items() if not k.startswith("Mixed_7c")}
  inception.save_npz(str(tmp_path / "missing.npz"), missing)
  with pytest.raises(WeightsFileError, match=r"missing keys \(e.g. Mixed_7c"):
    inception.load_params(str(tmp_path / "missing.npz"))
  wrong = dict(sd, **{"Mixed_5b.branch1x1.conv.weight": np.zeros((64, 192, 3, 3), np.float32)})
  inception.save_npz(str(tmp_path / "wrong.npz"), wrong)
  with pytest.raises(WeightsFileError, match="wrong shapes"):
    inception.load_params(str(tmp_path / "wrong.npz"))
  (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
  with pytest.raises(WeightsFileError, match="expected|Expected"):
    inception.load_params(str(tmp_path / "junk.pth"))


# --- PyTorch state-dict files, written without torch in the two layouts torch.save uses.

class _Global:
  def __init__(self, module, name):
    self.module, self.name = module, name


class _Storage:
  def __init__(self, key, array):
    self.key, self.array = key, np.ascontiguousarray(array).reshape(-1)


class _Tensor:
  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


_TYPE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage",
               np.dtype(np.float64): "DoubleStorage"}


class _TorchLikePickler(pickle._Pickler):
  """Emits what torch.save emits: GLOBAL torch._utils._rebuild_tensor_v2 + persistent storages."""

  def __init__(self, file, legacy):
    super().__init__(file, protocol=2)
    self.legacy = legacy

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      pid = ("storage", _Global("torch", _TYPE_NAMES[obj.array.dtype]), obj.key, "cpu",
             obj.array.size)
      return pid + (None,) if self.legacy else pid
    return None

  def save(self, obj, save_persistent_id=True):
    if isinstance(obj, _Global):
      self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
      return
    if isinstance(obj, _Tensor):
      self.save(_Global("torch._utils", "_rebuild_tensor_v2"))
      self.save((obj.storage, obj.offset, obj.size, obj.stride, False,
                 collections.OrderedDict()))
      self.write(pickle.REDUCE)
      return
    super().save(obj, save_persistent_id)


def _torch_like_state_dict():
  big = _Storage("0", np.arange(20, dtype=np.float32))
  sd = collections.OrderedDict()
  sd["conv.weight"] = _Tensor(big, 0, (2, 3, 1, 1), (3, 1, 1, 1))
  sd["strided"] = _Tensor(big, 2, (3, 2), (1, 3))            # a non-contiguous view, offset 2
  sd["bn.num_batches_tracked"] = _Tensor(_Storage("1", np.array([7], np.int64)), 0, (), ())
  sd["double"] = _Tensor(_Storage("2", np.array([0.5, -1.5])), 0, (2,), (1,))
  expected = {"conv.weight": np.arange(6, dtype=np.float32).reshape(2, 3, 1, 1),
              "strided": np.arange(20, dtype=np.float32)[2:][np.arange(3)[:, None] +
                                                             3 * np.arange(2)[None]],
              "bn.num_batches_tracked": np.array(7), "double": np.array([0.5, -1.5])}
  return sd, [big, sd["bn.num_batches_tracked"].storage, sd["double"].storage], expected


def _write_zip(path, sd, storages):
  buf = io.BytesIO()
  _TorchLikePickler(buf, legacy=False).dump(sd)
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", buf.getvalue())
    zf.writestr("archive/byteorder", "little")
    for s in storages:
      zf.writestr(f"archive/data/{s.key}", s.array.astype(s.array.dtype.newbyteorder("<"))
                  .tobytes())
    zf.writestr("archive/version", "3\n")


def _write_legacy(path, sd, storages):
  with open(path, "wb") as f:
    for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
      pickle.dump(header, f, protocol=2)
    _TorchLikePickler(f, legacy=True).dump(sd)
    pickle.dump(sorted(s.key for s in storages), f, protocol=2)
    for s in sorted(storages, key=lambda s: s.key):
      f.write(struct.pack("<q", s.array.size))
      f.write(s.array.astype(s.array.dtype.newbyteorder("<")).tobytes())


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_torch_state_dict_reader_without_torch(tmp_path, layout):
  sd, storages, expected = _torch_like_state_dict()
  path = str(tmp_path / f"tiny_{layout}.pth")
  (_write_zip if layout == "zip" else _write_legacy)(path, sd, storages)
  got = weights.read_torch_state_dict(path)
  assert list(got) == list(expected)
  for k, v in expected.items():
    np.testing.assert_array_equal(got[k], v)
    assert got[k].dtype == v.dtype
  raw = open(path, "rb").read()
  (tmp_path / "cut.pth").write_bytes(raw[: int(len(raw) * 0.8)])
  with pytest.raises(Exception) as e:
    weights.read_torch_state_dict(str(tmp_path / "cut.pth"))
  if "torch" not in sys.modules:  # load_state_dict wraps any failure with the format name
    with pytest.raises(WeightsFileError, match="pt_inception-2015-12-05"):
      inception.load_state_dict(str(tmp_path / "cut.pth"))
  del e


def test_full_checkpoint_through_the_torch_reader(params, tmp_path):
  """The converter end to end on a .pth holding the full network (generated weights)."""
  sd = inception.state_dict_from_params(params)
  storages, fake = [], collections.OrderedDict()
  for i, (k, v) in enumerate(sd.items()):
    st = _Storage(str(i), v)
    storages.append(st)
    stride = tuple(int(s // v.itemsize) for s in np.ascontiguousarray(v).strides)
    fake[k] = _Tensor(st, 0, tuple(v.shape), stride)
  _write_zip(str(tmp_path / "pt_inception.pth"), fake, storages)
  back = inception.params_from_state_dict(
      weights.read_torch_state_dict(str(tmp_path / "pt_inception.pth")))
  a = jax.tree.leaves(params)
  b = jax.tree.leaves(back)
  assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_reader_refuses_code_in_the_file(tmp_path):
  marker = tmp_path / "pwned"

  class Evil:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  with zipfile.ZipFile(tmp_path / "evil.pth", "w") as zf:
    zf.writestr("archive/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
  with pytest.raises(WeightsFileError, match="refusing to load the global"):
    weights.read_torch_state_dict(str(tmp_path / "evil.pth"))
  assert not marker.exists()


# ----------------------------------------------------------------- sharded statistics

def test_sharded_statistics_equal_single_device(params, features_fn):
  rng = np.random.default_rng(3)
  images = rng.uniform(-1, 1, (20, 8, 8, 3)).astype(np.float32)
  ds = pipeline.InMemoryDataset(images)
  ex = fid.FeatureExtractor(params, mesh_of(1), RES)
  one = fid.dataset_stats(ex, ds, batch_size=8)
  eight = fid.dataset_stats(fid.FeatureExtractor(params, mesh_of(8), RES), ds, batch_size=8)
  assert one.count == eight.count == 20  # the last batch of 8 holds 4 real images
  # Same sums up to float32 rounding (8-way convolutions and reductions reorder sums).
  np.testing.assert_allclose(eight.total, one.total, atol=1e-5 * np.abs(one.total).max())
  np.testing.assert_allclose(eight.outer, one.outer, atol=1e-5 * np.abs(one.outer).max())
  assert not np.allclose(one.total, 0)
  # And both equal the statistics of the features computed directly.
  padded = np.concatenate([images, images[:4]])
  feats = np.concatenate([np.asarray(features_fn(params, padded[i:i + 8])) for i in (0, 8, 16)])
  direct = fid.FeatureStats.from_features(feats[:20])
  np.testing.assert_allclose(one.total, direct.total, atol=1e-5 * np.abs(one.total).max())
  mu, sigma = one.mean_cov()
  mu_d, sigma_d = direct.mean_cov()
  np.testing.assert_allclose(sigma, sigma_d, rtol=1e-3, atol=1e-6)
  assert frechet_distance(mu, sigma, mu_d, sigma_d) == pytest.approx(0.0, abs=1e-6)


def test_uint8_quantisation_is_edms():
  x = jnp.array([-1.0, -0.999, 0.0, 0.5, 1.0, 1.2])[:, None, None, None]
  q = np.asarray(fid.to_uint8_values(x))[:, 0, 0, 0]
  np.testing.assert_array_equal(q, [0, 0, 128, 191, 255, 255])
  u = np.arange(256, dtype=np.float32)  # prepared data round-trips exactly
  back = np.asarray(fid.to_uint8_values(jnp.asarray(u / 127.5 - 1.0)[:, None, None, None]))
  np.testing.assert_array_equal(back[:, 0, 0, 0], u)


class _ToyObjective:
  """A 'denoiser' cheap enough to compile in a moment: the sampler logic is what is tested.
  Samples as EDM's deterministic Heun sampler or a (noise-drawing) multistep consistency
  sampler would, through the objective contract's `sample`."""
  def __init__(self, kind):
    self.kind = kind
    self.sampler_draws_noise = kind == "consistency"

  def denoiser(self, params, class_labels=None):
    shift = 0.0 if class_labels is None else class_labels @ jnp.arange(class_labels.shape[-1])
    return lambda x, sigma: params * x / (1.0 + sigma.reshape(-1, 1, 1, 1)) + (
        0.0 if class_labels is None else shift.reshape(-1, 1, 1, 1) * 0.01)

  def sample(self, params, latents, labels, key, s):
    from jaxdiff import sampling
    fn = self.denoiser(params, labels)
    if self.kind == "consistency":
      return sampling.consistency_sampler(fn, latents, jnp.asarray(s.consistency_sigmas,
                                                                   latents.dtype), key=key)
    return sampling.edm_sampler(fn, latents, num_steps=s.num_steps, sigma_min=s.sigma_min,
                                sigma_max=s.sigma_max, rho=s.rho)


@pytest.mark.parametrize("kind,num_classes", [("edm", 0), ("consistency", 4)])
def test_each_sample_depends_only_on_its_seed(kind, num_classes):
  s = ml_collections.ConfigDict(dict(num_steps=3, sigma_min=0.002, sigma_max=80.0, rho=7.0,
                                     consistency_sigmas=(80.0, 0.8)))
  obj = _ToyObjective(kind)
  params = jnp.float32(0.9)
  sampler = samples.per_seed_sampler(obj, s)
  a = fid.Generator(sampler, mesh_of(8), (4, 4, 3), num_classes, batch_size=16)(params, 100)
  b1 = fid.Generator(sampler, mesh_of(2), (4, 4, 3), num_classes, batch_size=8)
  b = np.concatenate([np.asarray(b1(params, 100)), np.asarray(b1(params, 108))])
  np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)
  assert not np.allclose(b[0], b[1])
  with pytest.raises(ValueError, match="fid_batch_size=6 is not divisible by the 8 devices"):
    fid.Generator(sampler, mesh_of(8), (4, 4, 3), 0, batch_size=6)


# ----------------------------------------------------------------- eval mode, end to end

def _smoke_config(name):
  return config_lib.load_config(f"{name}:smoke")


def test_fid_in_the_loop_and_eval_mode_on_a_smoke_recipe(tmp_path):
  """imagenet64_edm:smoke (class-conditional, generated data through the tfds path) with FID
  from random Inception weights on tiny data: in-loop FID, best tracking, --mode=eval."""
  from jaxdiff.commands import evaluate
  from jaxdiff.evaluation import fid_evaluator
  from jaxdiff.train import loop
  c = _smoke_config("imagenet64_edm")
  c.data.data_dir = str(tmp_path / "data")
  c.train.eval_every = 2                   # FID at steps 2 and 4 (the last)
  c.eval.inception_weights = "random"      # tests only: the numbers are not FID
  c.eval.inception_resolution = RES
  c.eval.fid_num_samples = 12              # one full and one padded batch of 8
  c.eval.fid_batch_size = 8
  c.eval.reference_num_samples = 40
  workdir = str(tmp_path / "run")
  # One device keeps the compilations cheap (sharded statistics are tested above); eval
  # below uses the same mesh, so its sampler and Inception programs come from the cache.
  mesh = mesh_of(1)
  summary = loop.train(c, workdir, mesh=mesh)
  history = fid_evaluator.read_history(workdir)
  assert [r["step"] for r in history] == [2, 4]
  assert all(np.isfinite(r["fid"]) and r["fid"] > 0 for r in history)
  assert history[0]["seeds"] == [0, 11] and history[0]["num_samples"] == 12
  assert history[0]["weights"] == "ema"
  assert history[0]["reference"].startswith("synthetic/8x8 train (40 images")
  best = min(history, key=lambda r: r["fid"])
  assert summary["fid"]["best"]["fid"] == best["fid"]
  assert summary["fid"]["last"]["step"] == 4
  assert len(os.listdir(os.path.join(workdir, "fid_reference"))) == 1   # computed once, cached
  metrics = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert any("fid/best" in m for m in metrics)

  # --mode=eval on the same run: raw weights of an earlier checkpoint, the cached reference.
  c_eval = c.copy_and_resolve_references()
  c_eval.eval.checkpoint_step = 2
  out = evaluate.evaluate_workdir(c_eval, workdir, use_ema=False, mesh=mesh)
  assert out["step"] == 2 and out["weights"] == "raw" and np.isfinite(out["fid"])
  assert "cached" in out["reference"]
  assert json.load(open(out["path"]))["fid"] == out["fid"]
  assert fid_evaluator.read_history(workdir)[-1]["mode"] == "eval"
  c_eval.eval.checkpoint_step = 3
  with pytest.raises(FileNotFoundError, match="checkpoint_step=3: no such checkpoint"):
    evaluate.evaluate_workdir(c_eval, workdir, mesh=mesh)
  # Without Inception weights: the recipe's built-in figure (none for a tfds recipe).
  c_q = c.copy_and_resolve_references()
  c_q.eval.inception_weights = ""
  q = evaluate.evaluate_workdir(c_q, workdir, mesh=mesh)
  assert q["metric"] == "none" and q["step"] == 4 and q["weights"] == "ema"
