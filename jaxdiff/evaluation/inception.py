"""InceptionV3 of the TF "2015-12-05" FID graph, in Flax, with weights from a file the user supplies.

FID as EDM, ECT, ACT and STF report it is the Fréchet distance between the
2048-d `pool_3` features of this network (Heusel et al.'s TTUR release of
Szegedy et al.'s 2015-12-05 InceptionV3). EDM's `fid.py` loads NVIDIA's
pickled port of it, `inception-2015-12-05.pkl` (StyleGAN3 metrics), called
with `return_features=True` on uint8 NCHW images. That port, like the TF graph,
does two things before the convolutions, and so do we:

1. Resize to 299x299 with TF1's legacy `resize_bilinear(align_corners=False)`:
   output pixel i samples input coordinate i * in_size / 299 (no half-pixel
   offset), bilinearly, clamped to the border. The pickle implements it with
   `affine_grid` + `grid_sample(mode='bilinear', padding_mode='border')` and a
   shift of 1/in_size - 1/299 that turns the half-pixel grid into this one.
   (pytorch-fid instead uses `F.interpolate(bilinear)` with half-pixel centres
   and scales to [-1, 1] by 2x/255 - 1, which moves FID by a few hundredths;
   we follow the TF graph and EDM, as torch-fidelity does with the same weights.)
2. Scale the 0..255 pixel values as (x - 128) / 128.

The network (pytorch-fid's `FIDInceptionA/C/E_1/E_2` variants of torchvision's
Inception3, which match the TF graph): conv+BN(eps 1e-3)+ReLU units without
bias; branch average pools exclude padding (`count_include_pad=False`); the
last block (Mixed_7c) pools with a 3x3 *max* pool; features are the spatial
mean of Mixed_7c's 2048 channels. Images must be 3-channel; `fid.py` repeats
grayscale channels, as EDM does.

Weights are never downloaded. `load_params(path)` reads either

* pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (the TF weights
  converted to a PyTorch state dict; published as a release asset of
  mseitzer/pytorch-fid, "fid_weights"), with `torch.load(weights_only=True)`
  when PyTorch is installed and otherwise with the restricted reader below,
  which never executes code from the file; or
* our `.npz`: the same state-dict names and shapes as numpy arrays, read with
  `np.load(allow_pickle=False)`. Make it once with
  `python -m jaxdiff.evaluation.inception --src=pt_inception-...pth --dst=inception-2015-12-05.npz`.

A file with missing keys, wrong shapes, or that is truncated fails with
`InceptionWeightsError` naming the expected format.

`resolution` (default 299) exists only for tests: smaller inputs (>= 75) make
the CPU test suite fast; FID computed at any other value is not comparable
with published numbers.
"""
from __future__ import annotations

import collections
import functools
import io
import os
import pickle
import zipfile
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FEATURE_DIM = 2048
RESOLUTION = 299
MIN_RESOLUTION = 75
NPZ_FORMAT = "jaxdiff-inception-2015-12-05-v1"
EXPECTED_FORMAT = (
    "pytorch-fid's pt_inception-2015-12-05-6726825d.pth (a PyTorch state dict of the FID "
    "InceptionV3) or a .npz holding the same state-dict names and shapes (write it with "
    "`python -m jaxdiff.evaluation.inception --src=FILE.pth --dst=FILE.npz`)")


class InceptionWeightsError(ValueError):
  """A weights file that is not (a complete copy of) the FID InceptionV3 state dict."""


# ------------------------------------------------------------------ resize

def linear_interpolation_matrix(coords: np.ndarray, in_size: int) -> np.ndarray:
  """[out, in] weights reading input coordinates `coords` (float, >= 0) by linear interpolation:
  the neighbours floor(x) and min(floor(x) + 1, in - 1) get weights 1 - frac and frac."""
  lo = np.minimum(np.floor(coords).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = coords - lo
  m = np.zeros((len(coords), in_size), np.float64)
  np.add.at(m, (np.arange(len(coords)), lo), 1.0 - frac)
  np.add.at(m, (np.arange(len(coords)), hi), frac)
  return m.astype(np.float32)


def tf1_bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] interpolation weights of TF1's resize_bilinear (align_corners=False, legacy).

  Output index i reads input coordinate x = i * in/out.
  """
  coords = np.arange(out_size, dtype=np.float64) * (in_size / out_size)
  return linear_interpolation_matrix(coords, in_size)


def resize_separable(images: jax.Array, size: int, matrix_fn) -> jax.Array:
  """NHWC -> [N, size, size, C] by `matrix_fn(in, out)` along H then W (exact float32 matmuls)."""
  _, h, w, _ = images.shape
  if (h, w) == (size, size):
    return images
  ry = jnp.asarray(matrix_fn(h, size))
  rx = jnp.asarray(matrix_fn(w, size))
  hi = jax.lax.Precision.HIGHEST
  out = jnp.einsum("oh,nhwc->nowc", ry, images, precision=hi)
  return jnp.einsum("pw,nowc->nopc", rx, out, precision=hi)


def resize_tf1_bilinear(images: jax.Array, size: int) -> jax.Array:
  """NHWC float images -> NHWC [N, size, size, C], TF1 legacy bilinear (see module doc)."""
  return resize_separable(images, size, tf1_bilinear_matrix)


# ------------------------------------------------------------------ network

class ConvBN(nn.Module):
  """Conv (no bias) + BatchNorm(eps=1e-3, running statistics) + ReLU, as BasicConv2d."""
  features: int
  kernel: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel
    kernel = self.param("kernel", nn.initializers.he_normal(), (kh, kw, x.shape[-1], self.features))
    scale = self.param("scale", nn.initializers.ones, (self.features,))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    mean = self.param("mean", nn.initializers.zeros, (self.features,))
    var = self.param("var", nn.initializers.ones, (self.features,))
    ph, pw = self.padding
    y = jax.lax.conv_general_dilated(
        x, kernel, (self.strides, self.strides), ((ph, ph), (pw, pw)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.precision)
    y = (y - mean) * (scale * jax.lax.rsqrt(var + 1e-3)) + bias
    return nn.relu(y)


def _avg3(x):
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max3s2(x):
  return nn.max_pool(x, (3, 3), (2, 2), "VALID")


class BlockA(nn.Module):  # Mixed_5b/c/d: FIDInceptionA
  pool_features: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    c = lambda f, k, p=(0, 0), name=None: ConvBN(f, k, 1, p, self.precision, name=name)
    b1 = c(64, (1, 1), name="branch1x1")(x)
    b5 = c(48, (1, 1), name="branch5x5_1")(x)
    b5 = c(64, (5, 5), (2, 2), name="branch5x5_2")(b5)
    b3 = c(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = c(96, (3, 3), (1, 1), name="branch3x3dbl_2")(b3)
    b3 = c(96, (3, 3), (1, 1), name="branch3x3dbl_3")(b3)
    bp = c(self.pool_features, (1, 1), name="branch_pool")(_avg3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class BlockB(nn.Module):  # Mixed_6a: InceptionB
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    b3 = ConvBN(384, (3, 3), 2, (0, 0), self.precision, name="branch3x3")(x)
    bd = ConvBN(64, (1, 1), 1, (0, 0), self.precision, name="branch3x3dbl_1")(x)
    bd = ConvBN(96, (3, 3), 1, (1, 1), self.precision, name="branch3x3dbl_2")(bd)
    bd = ConvBN(96, (3, 3), 2, (0, 0), self.precision, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max3s2(x)], axis=-1)


class BlockC(nn.Module):  # Mixed_6b..6e: FIDInceptionC
  channels_7x7: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    c = lambda f, k, p=(0, 0), name=None: ConvBN(f, k, 1, p, self.precision, name=name)
    b1 = c(192, (1, 1), name="branch1x1")(x)
    b7 = c(c7, (1, 1), name="branch7x7_1")(x)
    b7 = c(c7, (1, 7), (0, 3), name="branch7x7_2")(b7)
    b7 = c(192, (7, 1), (3, 0), name="branch7x7_3")(b7)
    bd = c(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = c(c7, (7, 1), (3, 0), name="branch7x7dbl_2")(bd)
    bd = c(c7, (1, 7), (0, 3), name="branch7x7dbl_3")(bd)
    bd = c(c7, (7, 1), (3, 0), name="branch7x7dbl_4")(bd)
    bd = c(192, (1, 7), (0, 3), name="branch7x7dbl_5")(bd)
    bp = c(192, (1, 1), name="branch_pool")(_avg3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class BlockD(nn.Module):  # Mixed_7a: InceptionD
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    c = lambda f, k, s=1, p=(0, 0), name=None: ConvBN(f, k, s, p, self.precision, name=name)
    b3 = c(192, (1, 1), name="branch3x3_1")(x)
    b3 = c(320, (3, 3), 2, name="branch3x3_2")(b3)
    b7 = c(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = c(192, (1, 7), 1, (0, 3), name="branch7x7x3_2")(b7)
    b7 = c(192, (7, 1), 1, (3, 0), name="branch7x7x3_3")(b7)
    b7 = c(192, (3, 3), 2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max3s2(x)], axis=-1)


class BlockE(nn.Module):  # Mixed_7b: FIDInceptionE_1 (avg pool), Mixed_7c: FIDInceptionE_2 (max pool)
  max_pool: bool
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    c = lambda f, k, p=(0, 0), name=None: ConvBN(f, k, 1, p, self.precision, name=name)
    b1 = c(320, (1, 1), name="branch1x1")(x)
    b3 = c(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([c(384, (1, 3), (0, 1), name="branch3x3_2a")(b3),
                          c(384, (3, 1), (1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = c(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = c(384, (3, 3), (1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([c(384, (1, 3), (0, 1), name="branch3x3dbl_3a")(bd),
                          c(384, (3, 1), (1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    if self.max_pool:
      # The TF graph's mixed_10 pools with max, not average (pytorch-fid's E_2).
      pooled = nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))
    else:
      pooled = _avg3(x)
    bp = c(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3FID(nn.Module):
  """uint8-valued NHWC RGB images (float, 0..255) -> [N, 2048] pool_3 features."""
  resolution: int = RESOLUTION
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, images):
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"InceptionV3FID needs NHWC RGB images; got shape {images.shape}.")
    x = resize_tf1_bilinear(images.astype(jnp.float32), self.resolution)
    x = (x - 128.0) / 128.0
    p = self.precision
    x = ConvBN(32, (3, 3), 2, (0, 0), p, name="Conv2d_1a_3x3")(x)
    x = ConvBN(32, (3, 3), 1, (0, 0), p, name="Conv2d_2a_3x3")(x)
    x = ConvBN(64, (3, 3), 1, (1, 1), p, name="Conv2d_2b_3x3")(x)
    x = _max3s2(x)
    x = ConvBN(80, (1, 1), 1, (0, 0), p, name="Conv2d_3b_1x1")(x)
    x = ConvBN(192, (3, 3), 1, (0, 0), p, name="Conv2d_4a_3x3")(x)
    x = _max3s2(x)
    x = BlockA(32, p, name="Mixed_5b")(x)
    x = BlockA(64, p, name="Mixed_5c")(x)
    x = BlockA(64, p, name="Mixed_5d")(x)
    x = BlockB(p, name="Mixed_6a")(x)
    x = BlockC(128, p, name="Mixed_6b")(x)
    x = BlockC(160, p, name="Mixed_6c")(x)
    x = BlockC(160, p, name="Mixed_6d")(x)
    x = BlockC(192, p, name="Mixed_6e")(x)
    x = BlockD(p, name="Mixed_7a")(x)
    x = BlockE(False, p, name="Mixed_7b")(x)
    x = BlockE(True, p, name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))


def make_model(resolution: int = RESOLUTION) -> InceptionV3FID:
  if resolution < MIN_RESOLUTION:
    raise ValueError(f"Inception resolution {resolution} is below the minimum "
                     f"{MIN_RESOLUTION} the network's strided layers allow (FID uses 299).")
  return InceptionV3FID(resolution=int(resolution))


# ------------------------------------------------------------------ parameters

_TORCH_SUFFIX = {"kernel": "conv.weight", "scale": "bn.weight", "bias": "bn.bias",
                 "mean": "bn.running_mean", "var": "bn.running_var"}


@functools.lru_cache(maxsize=1)
def param_shapes() -> dict[str, tuple[int, ...]]:
  """Flat 'Module.sub.leaf' -> Flax shape, from the network definition (no compute)."""
  model = InceptionV3FID(resolution=MIN_RESOLUTION)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, MIN_RESOLUTION, MIN_RESOLUTION, 3),
                                               jnp.float32))["params"]
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
    flat[".".join(p.key for p in path)] = tuple(leaf.shape)
  return flat


def torch_name(flax_name: str) -> str:
  """'Mixed_5b.branch1x1.kernel' -> 'Mixed_5b.branch1x1.conv.weight' (pytorch-fid's key)."""
  module, leaf = flax_name.rsplit(".", 1)
  return f"{module}.{_TORCH_SUFFIX[leaf]}"


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict:
  tree: dict = {}
  for name, value in flat.items():
    node = tree
    *parents, leaf = name.split(".")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def params_from_state_dict(state_dict: Mapping[str, Any], source: str = "state dict") -> dict:
  """pytorch-fid state dict (numpy arrays, torch layouts) -> Flax params; validates every key."""
  shapes = param_shapes()
  flat, missing, wrong = {}, [], []
  for name, shape in shapes.items():
    key = torch_name(name)
    if key not in state_dict:
      missing.append(key)
      continue
    value = np.asarray(state_dict[key])
    if name.endswith(".kernel"):
      if value.ndim != 4:
        wrong.append(f"{key}: shape {value.shape}")
        continue
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if tuple(value.shape) != shape:
      wrong.append(f"{key}: shape {tuple(value.shape)}, expected "
                   f"{shape if not name.endswith('.kernel') else _oihw(shape)}")
      continue
    flat[name] = value.astype(np.float32)
  if missing or wrong:
    detail = []
    if missing:
      detail.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if wrong:
      detail.append(f"{len(wrong)} wrong shapes (e.g. {'; '.join(wrong[:3])})")
    raise InceptionWeightsError(f"{source} is not the FID InceptionV3: {'; '.join(detail)}. "
                                f"Expected {EXPECTED_FORMAT}.")
  return _unflatten(flat)


def _oihw(hwio: tuple[int, ...]) -> tuple[int, ...]:
  return (hwio[3], hwio[2], hwio[0], hwio[1])


def state_dict_from_params(params) -> dict[str, np.ndarray]:
  """Flax params -> pytorch-fid state dict (numpy, torch layouts): the inverse of the above."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = ".".join(p.key for p in path)
    value = np.asarray(leaf)
    if name.endswith(".kernel"):
      value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    out[torch_name(name)] = value
  return out


def random_params(seed: int = 0) -> dict:
  """Random weights (He-normal kernels, identity BN), made with numpy: fast, for tests only."""
  rng = np.random.default_rng(seed)
  flat = {}
  for name, shape in param_shapes().items():
    leaf = name.rsplit(".", 1)[1]
    if leaf == "kernel":
      fan_in = shape[0] * shape[1] * shape[2]
      flat[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    elif leaf in ("scale", "var"):
      flat[name] = np.ones(shape, np.float32)
    else:
      flat[name] = np.zeros(shape, np.float32)
  return _unflatten(flat)


# ------------------------------------------------------------------ files

def save_npz(path: str, state_dict: Mapping[str, np.ndarray]) -> None:
  arrays = {k: np.asarray(v) for k, v in state_dict.items()}
  arrays["__format__"] = np.asarray(NPZ_FORMAT)
  tmp = path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """A state dict from `.npz` or a PyTorch `.pth`, never executing code from the file."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"Inception weights file not found: {path}. Expected "
                            f"{EXPECTED_FORMAT}.")
  try:
    if path.endswith(".npz"):
      with np.load(path, allow_pickle=False) as data:
        out = {k: data[k] for k in data.files if k != "__format__"}
    else:
      out = _load_torch(path)
  except InceptionWeightsError:
    raise
  except Exception as e:  # noqa: BLE001 - any read failure means "not this format"
    raise InceptionWeightsError(
        f"{path} could not be read ({type(e).__name__}: {str(e)[:200]}); it may be truncated "
        f"or of another format. Expected {EXPECTED_FORMAT}.") from e
  if not isinstance(out, Mapping) or not out:
    raise InceptionWeightsError(f"{path} holds no state dict. Expected {EXPECTED_FORMAT}.")
  return dict(out)


def load_params(path: str) -> dict:
  """Flax params of the FID InceptionV3 from a `.pth` or `.npz` file (see module doc)."""
  return params_from_state_dict(load_state_dict(path), source=path)


def _load_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    return read_torch_state_dict(path)
  # weights_only=True: tensors and containers only; refuses any other pickled object.
  sd = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(sd, Mapping):
    raise InceptionWeightsError(f"{path} holds a {type(sd).__name__}, not a state dict.")
  return {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.cpu().numpy()
          for k, v in sd.items()}


# ------------------------------------------------------------------ torch-free .pth reader

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageType:
  def __init__(self, name: str):
    if name not in _STORAGE_DTYPES:
      raise InceptionWeightsError(f"unsupported tensor storage torch.{name}")
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
  """A flat buffer filled from the file (possibly after unpickling, for the legacy format)."""

  def __init__(self, dtype: np.dtype, numel: int):
    self.dtype, self.numel, self.data = dtype, int(numel), None


class _LazyTensor:
  def __init__(self, storage: _Storage, offset: int, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(
        stride)

  def materialise(self) -> np.ndarray:
    data = self.storage.data
    if data is None:
      raise InceptionWeightsError("a tensor's storage was never read (truncated file?)")
    if all(self.size):
      last = self.offset + sum((n - 1) * st for n, st in zip(self.size, self.stride))
      if last >= len(data):
        raise InceptionWeightsError("a tensor reaches past its storage (truncated file?)")
    item = data.dtype.itemsize
    return np.lib.stride_tricks.as_strided(
        data[self.offset:], shape=self.size, strides=[s * item for s in self.stride]).copy()


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only the few globals a state dict needs; anything else is refused, not run."""

  _ALLOWED: dict[tuple[str, str], Callable] = {
      ("collections", "OrderedDict"): collections.OrderedDict,
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  }

  def __init__(self, file, load_storage: Callable):
    super().__init__(file)
    self._load_storage = load_storage

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return self._ALLOWED[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise InceptionWeightsError(f"refusing to load the global {module}.{name} from a weights "
                                "file (only tensors and dicts are allowed)")

  def persistent_load(self, pid):
    return self._load_storage(pid)


def _materialise(obj):
  if isinstance(obj, _LazyTensor):
    return obj.materialise()
  if isinstance(obj, Mapping):
    return {k: _materialise(v) for k, v in obj.items()}
  return obj


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """A PyTorch state dict (zip format of torch >= 1.6, or the legacy format) without torch.

  Only `OrderedDict`, tensor rebuild functions and storage types are
  resolved while unpickling; any other global raises, so no code from the
  file runs (the same policy as `torch.load(weights_only=True)`).
  """
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as zf:
      pkl = [n for n in zf.namelist() if n.endswith("data.pkl")]
      if len(pkl) != 1:
        raise InceptionWeightsError(f"{path} is a zip without one data.pkl")
      prefix = pkl[0][:-len("data.pkl")]
      byteorder = "little"
      if prefix + "byteorder" in zf.namelist():
        byteorder = zf.read(prefix + "byteorder").decode().strip()
      storages: dict[str, _Storage] = {}

      def load_storage(pid):
        kind, storage_type, key, _location, numel = pid[:5]
        if kind != "storage" or not isinstance(storage_type, _StorageType):
          raise InceptionWeightsError(f"unexpected persistent id {pid!r}")
        if key not in storages:
          dtype = storage_type.dtype.newbyteorder("<" if byteorder == "little" else ">")
          raw = zf.read(f"{prefix}data/{key}")
          if len(raw) != int(numel) * dtype.itemsize:
            raise InceptionWeightsError(f"storage {key} holds {len(raw)} bytes, expected "
                                        f"{int(numel) * dtype.itemsize} (truncated file?)")
          storage = _Storage(dtype, numel)
          storage.data = np.frombuffer(raw, dtype).astype(dtype.newbyteorder("="))
          storages[key] = storage
        return storages[key]

      obj = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), load_storage).load()
      return _materialise(obj)

  with open(path, "rb") as f:
    storages = {}

    def load_legacy(pid):
      kind, storage_type, key, _location, numel = pid[:5]
      view = pid[5] if len(pid) > 5 else None
      if kind != "storage" or not isinstance(storage_type, _StorageType) or view is not None:
        raise InceptionWeightsError(f"unsupported persistent id {pid!r}")
      if key not in storages:
        storages[key] = _Storage(storage_type.dtype, numel)
      return storages[key]

    def plain_load():
      return _RestrictedUnpickler(f, load_legacy).load()

    magic = plain_load()
    if magic != _LEGACY_MAGIC:
      raise InceptionWeightsError(f"{path} is neither a zip nor a legacy PyTorch file")
    plain_load()  # protocol version
    plain_load()  # sys info
    obj = plain_load()
    keys = plain_load()
    for key in keys:
      storage = storages[key]
      count = np.frombuffer(f.read(8), "<i8")
      if count.size != 1 or int(count[0]) != storage.numel:
        raise InceptionWeightsError(f"storage {key}: bad element count (truncated file?)")
      nbytes = storage.numel * storage.dtype.itemsize
      raw = f.read(nbytes)
      if len(raw) != nbytes:
        raise InceptionWeightsError(f"storage {key} is cut short (truncated file?)")
      storage.data = np.frombuffer(raw, storage.dtype.newbyteorder("<")).astype(storage.dtype)
    return _materialise(obj)


# ------------------------------------------------------------------ CLI: .pth -> .npz

def convert(src: str, dst: str) -> None:
  """Converts pytorch-fid's .pth (or any file load_state_dict reads) to our validated .npz."""
  sd = load_state_dict(src)
  params_from_state_dict(sd, source=src)  # validate before writing
  keep = {torch_name(n): sd[torch_name(n)] for n in param_shapes()}
  save_npz(dst, keep)


def main(argv):
  from absl import flags
  del argv
  convert(flags.FLAGS.src, flags.FLAGS.dst)
  print(f"wrote {flags.FLAGS.dst}; use it with --config.eval.inception_weights={flags.FLAGS.dst}")


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("src", None, "pt_inception-2015-12-05-6726825d.pth (pytorch-fid).")
  flags.DEFINE_string("dst", None, "Output .npz.")
  flags.mark_flags_as_required(["src", "dst"])
  app.run(main)
