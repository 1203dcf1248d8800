"""LPIPS-VGG16 v0.1 (jaxdiff/objectives/lpips.py) and its use as the CT / ACT distance.

Random weights at small resolutions throughout (the real weights are never
downloaded): the network's shapes, identity, symmetry, grayscale handling and
gradients; a PyTorch re-implementation of lpips' forward pass (when torch is
installed); the .pth -> .npz converter and the loader's errors; the
`consistency.metric='lpips'` wiring of CT and ACT.
"""
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import config as config_lib
from jaxdiff.objectives import base
from jaxdiff.objectives import consistency as cons
from jaxdiff.objectives import lpips as L
from jaxdiff.errors import WeightsFileError
from jaxdiff import objectives

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def params():
  return L.random_params(0)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, params):
  path = str(tmp_path_factory.mktemp("lpips") / "lpips_vgg.npz")
  L.save_npz(path, L.state_dict_from_params(params))
  return path


_JITTED = {}


def dist(params, x, y, resize=32):
  """lpips_distance, jitted once per resize for the module (eager LPIPS compiles op by op)."""
  if resize not in _JITTED:
    _JITTED[resize] = jax.jit(lambda p, a, b: L.lpips_distance(p, a, b, resize=resize))
  return _JITTED[resize](params, x, y)


def images(seed, shape=(3, 12, 10, 3)):
  return jax.random.uniform(jax.random.PRNGKey(seed), shape, jnp.float32, -1.0, 1.0)


# ------------------------------------------------------------------ the network


def test_shapes_and_determinism(params):
  x, y = images(0), images(1)
  d = dist(params, x, y)
  chex.assert_shape(d, (3,))
  assert d.dtype == jnp.float32
  assert np.all(np.isfinite(d)) and np.all(d > 0)
  np.testing.assert_array_equal(np.asarray(d), np.asarray(dist(params, x, y)))
  shapes = L.param_shapes()
  assert shapes["vgg.conv1_1.kernel"] == (3, 3, 3, 64)
  assert shapes["vgg.conv5_3.kernel"] == (3, 3, 512, 512)
  assert [shapes[f"lin{k}"] for k in range(5)] == [(64,), (128,), (256,), (512,), (512,)]
  assert len(shapes) == 13 * 2 + 5
  # The torchvision names of the 13 convs: features.0 ... features.28.
  assert L.torch_name("vgg.conv1_1.kernel") == "features.0.weight"
  assert L.torch_name("vgg.conv5_3.bias") == "features.28.bias"
  assert L.torch_name("lin4") == "lin4.model.1.weight"


def test_identical_images_give_exactly_zero_and_different_ones_positive(params):
  x, y = images(2), images(3)
  np.testing.assert_array_equal(np.asarray(dist(params, x, x)), np.zeros(3, np.float32))
  mixed = y.at[1].set(x[1])  # one identical pair in a batch of different ones
  d = np.asarray(dist(params, x, mixed))
  assert d[1] == 0.0 and d[0] > 0 and d[2] > 0


def test_symmetric(params):
  x, y = images(4), images(5)
  np.testing.assert_allclose(np.asarray(dist(params, x, y)), np.asarray(dist(params, y, x)),
                             rtol=1e-6)


def test_grayscale_is_repeated_to_rgb(params):
  x, y = images(6, (3, 12, 10, 1)), images(7, (3, 12, 10, 1))
  d = dist(params, x, y, 20)
  chex.assert_shape(d, (3,))
  rgb = dist(params, jnp.repeat(x, 3, -1), jnp.repeat(y, 3, -1), 20)
  np.testing.assert_allclose(np.asarray(d), np.asarray(rgb), rtol=1e-6)
  with pytest.raises(ValueError, match="1 or 3 channels"):
    L.lpips_distance(params, jnp.zeros((1, 16, 16, 2)), jnp.zeros((1, 16, 16, 2)))
  with pytest.raises(ValueError, match="at least 16"):
    L.lpips_distance(params, jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 8, 8, 3)), resize=None)


def test_gradient_is_finite_including_dead_features(params):
  grad = jax.jit(jax.grad(lambda p, a, b: jnp.sum(L.lpips_distance(p, a, b, resize=16)),
                          argnums=1))
  x, y = images(8, (2, 8, 8, 3)), images(9, (2, 8, 8, 3))
  for a, b in [(x, y), (x, x), (-jnp.ones_like(x), jnp.ones_like(x))]:
    g = grad(params, a, b)
    chex.assert_shape(g, x.shape)
    assert np.all(np.isfinite(np.asarray(g)))
  assert float(jnp.max(jnp.abs(grad(params, x, y)))) > 0
  # The channel norm's gradient is 0, not 0/0, where all features are 0.
  g = jax.grad(lambda f: jnp.sum(L.normalize_channels(f)))(jnp.zeros((1, 2, 2, 4)))
  np.testing.assert_array_equal(np.asarray(g), np.full((1, 2, 2, 4), 1e10, np.float32))


def test_bilinear_resize_is_pytorchs_and_matches_jax_image_resize_when_upsampling():
  m = L.torch_bilinear_matrix(5, 12)
  np.testing.assert_allclose(m.sum(1), 1.0, rtol=1e-6)
  x = images(10, (2, 7, 5, 3))
  ours = L.resize_bilinear(x, 16)
  ref = jax.image.resize(x, (2, 16, 16, 3), "bilinear")  # CT's JAX code
  np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=2e-6)
  np.testing.assert_array_equal(np.asarray(L.resize_bilinear(x[:, :5], 5)), np.asarray(x[:, :5]))


def _torch_lpips(sd, x, y, size):
  """lpips.LPIPS(net='vgg', version='0.1') forward, written out in PyTorch (NCHW)."""
  import torch
  import torch.nn.functional as F
  x = torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2)
  y = torch.from_numpy(np.asarray(y)).permute(0, 3, 1, 2)
  if size:
    x = F.interpolate(x, size=size, mode="bilinear")
    y = F.interpolate(y, size=size, mode="bilinear")
  if x.shape[1] == 1:
    x, y = x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)
  shift = torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1)
  scale = torch.tensor([.458, .448, .450]).view(1, 3, 1, 1)

  def features(h):  # torchvision vgg16.features[:30], lpips' slices 1-5
    h, out = (h - shift) / scale, []
    for i in range(30):
      if f"features.{i}.weight" in sd:
        h = F.relu(F.conv2d(h, torch.from_numpy(sd[f"features.{i}.weight"]),
                            torch.from_numpy(sd[f"features.{i}.bias"]), padding=1))
      elif i in (4, 9, 16, 23):
        out.append(h)
        h = F.max_pool2d(h, 2, 2)
    return out + [h]

  def normalize(t):
    return t / (torch.sqrt(torch.sum(t ** 2, dim=1, keepdim=True)) + 1e-10)

  total = 0
  for k, (a, b) in enumerate(zip(features(x), features(y))):
    diff = (normalize(a) - normalize(b)) ** 2
    total = total + F.conv2d(diff, torch.from_numpy(sd[f"lin{k}.model.1.weight"])).mean(
        [2, 3], keepdim=True)
  return total.flatten().numpy()


def test_resize_matches_pytorch_interpolate():
  torch = pytest.importorskip("torch")
  import torch.nn.functional as F
  x = np.random.default_rng(1).uniform(-1, 1, (2, 13, 11, 3)).astype(np.float32)
  for size in (32, 8):  # up and down (no antialiasing, as F.interpolate's default)
    ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=size, mode="bilinear")
    np.testing.assert_allclose(np.asarray(L.resize_bilinear(jnp.asarray(x), size)),
                               ref.permute(0, 2, 3, 1).numpy(), atol=1e-6)


def test_matches_a_pytorch_lpips_forward(params):
  torch = pytest.importorskip("torch")
  sd = L.state_dict_from_params(params)
  rng = np.random.default_rng(0)
  # RGB; grayscale at a size whose pools drop a row (20 -> 10 -> 5 -> 2 -> 1).
  for shape, size in [((3, 12, 10, 3), 32), ((3, 12, 10, 1), 20)]:
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    y = rng.uniform(-1, 1, shape).astype(np.float32)
    with torch.no_grad():
      ref = _torch_lpips(sd, x, y, size)
    np.testing.assert_allclose(np.asarray(dist(params, x, y, size)), ref, rtol=2e-5)


# ------------------------------------------------------------------ weights files


def _fake_torch_files(tmp_path, params):
  """torchvision's and lpips' state dicts (names and shapes as the real files), torch.save'd."""
  torch = pytest.importorskip("torch")
  sd = L.state_dict_from_params(params)
  vgg = {k: torch.from_numpy(v.copy()) for k, v in sd.items() if k.startswith("features.")}
  vgg["classifier.6.bias"] = torch.zeros(1000)  # the real file's head: ignored
  lin = {k: torch.from_numpy(v.copy()) for k, v in sd.items() if k.startswith("lin")}
  vgg_path, lin_path = str(tmp_path / "vgg16-397923af.pth"), str(tmp_path / "vgg.pth")
  torch.save(vgg, vgg_path)
  torch.save(lin, lin_path, _use_new_zipfile_serialization=False)  # legacy format, as 2018's
  return vgg_path, lin_path


def test_convert_pth_files_load_round_trip(tmp_path, params):
  vgg_path, lin_path = _fake_torch_files(tmp_path, params)
  out = str(tmp_path / "lpips_vgg.npz")
  L.convert(vgg_path, lin_path, out)
  loaded = L.load_params(out)
  chex.assert_trees_all_equal(loaded, params)
  with np.load(out) as data:
    assert str(data["__format__"]) == L.NPZ_FORMAT
    assert "classifier.6.bias" not in data.files
  # The converter's command line.
  import subprocess
  import sys
  out2 = str(tmp_path / "cli.npz")
  res = subprocess.run([sys.executable, "-m", "jaxdiff.objectives.lpips", f"--vgg={vgg_path}",
                        f"--lin={lin_path}", f"--out={out2}"], cwd=ROOT, capture_output=True,
                       text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=120)
  assert res.returncode == 0, res.stderr[-2000:]
  assert "lpips_weights=" in res.stdout
  chex.assert_trees_all_equal(L.load_params(out2), params)
  # A truncated .pth and the two files swapped fail clearly.
  raw = open(vgg_path, "rb").read()
  cut = str(tmp_path / "cut.pth")
  with open(cut, "wb") as f:
    f.write(raw[: len(raw) // 2])
  with pytest.raises(WeightsFileError, match="truncated"):
    L.convert(cut, lin_path, str(tmp_path / "x.npz"))
  with pytest.raises(WeightsFileError, match="missing keys"):
    L.convert(lin_path, vgg_path, str(tmp_path / "x.npz"))
  assert not os.path.exists(str(tmp_path / "x.npz"))


def test_npz_round_trip_without_torch(tmp_path, params, weights_file):
  chex.assert_trees_all_equal(L.load_params(weights_file), params)


def test_wrong_files_fail_with_the_expected_format(tmp_path, params, weights_file):
  sd = L.state_dict_from_params(params)
  command = "python -m jaxdiff.objectives.lpips"

  def write(name, state):
    path = str(tmp_path / name)
    L.save_npz(path, state)
    return path

  with pytest.raises(WeightsFileError, match="not found.*" + command):
    L.load_params(str(tmp_path / "absent.npz"))
  missing = dict(sd)
  del missing["features.28.weight"]
  with pytest.raises(WeightsFileError, match=r"1 missing keys \(e\.g\. features\.28\.weight"):
    L.load_params(write("missing.npz", missing))
  wrong = dict(sd, **{"lin2.model.1.weight": np.ones((1, 128, 1, 1), np.float32)})
  with pytest.raises(WeightsFileError, match=r"wrong shapes.*lin2.*expected float \(1, 256"):
    L.load_params(write("wrong.npz", wrong))
  negative = dict(sd, **{"lin0.model.1.weight": -sd["lin0.model.1.weight"]})
  with pytest.raises(WeightsFileError, match="negative"):
    L.load_params(write("negative.npz", negative))
  raw = open(weights_file, "rb").read()
  cut = str(tmp_path / "cut.npz")
  with open(cut, "wb") as f:
    f.write(raw[: len(raw) // 3])
  with pytest.raises(WeightsFileError, match="truncated.*" + command):
    L.load_params(cut)
  pth = str(tmp_path / "vgg.pth")
  with open(pth, "wb") as f:
    f.write(b"not a state dict")
  with pytest.raises(WeightsFileError, match=r"not a \.npz.*" + command):
    L.load_params(pth)
  other = str(tmp_path / "other.npz")
  np.savez(other, __format__=np.asarray("jaxdiff-inception-2015-12-05-v1"), x=np.zeros(1))
  with pytest.raises(WeightsFileError, match="inception"):
    L.load_params(other)


# ------------------------------------------------------------------ CT / ACT wiring


def load_config(name, arg="smoke"):
  return config_lib.load_config(f"{name}:{arg}")


def lpips_config(name, weights, method=None):
  c = load_config(name)
  if method:
    c.objective.name = method
  c.consistency.metric = "lpips"
  c.consistency.lpips_weights = weights
  c.consistency.lpips_resolution = 16
  for key in ("train_precond", "weighting"):  # the method's own (digits_ect sets ECT's)
    c.consistency[key] = "auto"
  return c


def test_resolve_settings_for_lpips(tmp_path, weights_file):
  c = lpips_config("digits_ect", weights_file, "ct")
  s = cons.resolve_settings(c, (8, 8, 1))
  assert (s.metric, s.lpips_weights, s.lpips_resolution) == ("lpips", weights_file, 16)
  config_lib.validate(c)
  assert config_lib.base_config().consistency.lpips_resolution == 224
  c.consistency.lpips_weights = ""
  with pytest.raises(config_lib.ConfigError, match="lpips_weights=/path.*python -m jaxdiff"):
    cons.resolve_settings(c, (8, 8, 1))
  c.consistency.lpips_weights = str(tmp_path / "absent.npz")
  with pytest.raises(config_lib.ConfigError, match="does not exist"):
    cons.resolve_settings(c, (8, 8, 1))
  c.consistency.lpips_weights = weights_file
  with pytest.raises(config_lib.ConfigError, match="compares images"):
    cons.resolve_settings(c, (2,))
  c.consistency.lpips_resolution = 0  # 8x8 digits are too small for VGG16 unresized
  with pytest.raises(config_lib.ConfigError, match="at least 16"):
    cons.resolve_settings(c, (8, 8, 1))


def _tiny_net(params, x, c_noise, class_labels=None, augment_labels=None, train=False,
              dropout_key=None):
  """A 3x3 conv with a noise embedding: the objectives' raw-network signature, fast to compile
  (the recipe's UNet would dominate the test's time; the metric is what is tested)."""
  h = jax.lax.conv_general_dilated(x, params["w"], (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jnp.tanh(h + c_noise[:, None, None, None] * params["t"] + params["b"])


def _digits_setup(c, objective_cls):
  """(objective, network params, batch) of a digits recipe's settings, with `_tiny_net`."""
  shape = (8, 8, 1)
  obj = objective_cls.from_config(c, _tiny_net, shape, base.LognormalSampler())
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  net = {"w": 0.5 * jax.random.normal(k[0], (3, 3, 1, 1)), "t": jax.random.normal(k[1], (1,)),
         "b": 0.1 * jax.random.normal(k[2], (1,))}
  return obj, net, {"image": images(11, (2,) + shape)}


def test_ct_loss_with_lpips_runs_on_digits(params, weights_file):
  obj, net, batch = _digits_setup(lpips_config("digits_ect", weights_file, "ct"),
                                  objectives.get("ct"))
  chex.assert_trees_all_equal(obj.lpips_params, params)
  aux = obj.init_aux(net)
  key, step = jax.random.PRNGKey(5), jnp.asarray(3)

  @jax.jit
  def run(p):  # forward only: LPIPS' gradient is tested above (compiling VGG's is slow)
    loss, metrics = obj.loss(p, aux, batch, key, step)
    out = obj.terms(p, aux["teacher"], batch, key, step)
    return loss, metrics["per_sample_loss"], out["student"], out["target"]

  loss, per_sample, student, target = run(net)
  assert np.isfinite(float(loss)) and float(loss) > 0
  chex.assert_shape(per_sample, (2,))
  ref = dist(params, student, target, 16)
  np.testing.assert_allclose(np.asarray(per_sample), np.asarray(ref), rtol=1e-5)  # uniform weight
  with pytest.raises(ValueError, match="per_sample_distance"):
    obj.distance(batch["image"])


def test_act_loads_lpips_and_measures_against_the_clipped_target(params, weights_file):
  c = lpips_config("digits_act", weights_file)
  c.act.lam0 = 0.0  # plain CT: the generator loss is the consistency term alone
  act, net, batch = _digits_setup(c, objectives.get("act"))
  obj = act.consistency  # the consistency core ACT composes
  chex.assert_trees_all_equal(obj.lpips_params, params)
  # lam0 = 0 never reads the discriminator: the aux state without one.
  aux = {"teacher": net, "p": jnp.zeros(()), "r1_ema": jnp.zeros(())}
  key, step = jax.random.PRNGKey(6), jnp.asarray(2)
  # A cheap stand-in for LPIPS that shows which target the loss measures against.
  obj.per_sample_distance = lambda student, target: jnp.max(
      jnp.abs(target.reshape(target.shape[0], -1)), axis=-1)

  @jax.jit
  def run(p):
    _, metrics = act.loss(p, aux, batch, key, step)
    out = obj.terms(p, aux["teacher"], batch, key, step)
    return metrics["per_sample_loss"], out["target"]

  per_sample, target = run(net)
  clipped = np.abs(np.clip(np.asarray(target), -1, 1)).reshape(2, -1).max(-1)
  np.testing.assert_allclose(np.asarray(per_sample), clipped, rtol=1e-6)
