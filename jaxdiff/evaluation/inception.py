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
  when PyTorch is installed and otherwise with jaxdiff's restricted reader
  (`jaxdiff.weights`), which never executes code from the file; or
* our `.npz`: the same state-dict names and shapes as numpy arrays, read with
  `np.load(allow_pickle=False)`. Make it once with
  `python -m jaxdiff.evaluation.inception --src=pt_inception-...pth --dst=inception-2015-12-05.npz`.

A file with missing keys, wrong shapes, or that is truncated fails with
`WeightsFileError` naming the expected format.

`resolution` (default 299) exists only for tests: smaller inputs (>= 75) make
the CPU test suite fast; FID computed at any other value is not comparable
with published numbers.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import weights
from jaxdiff.errors import WeightsFileError
from jaxdiff.resize import resize_separable, tf1_bilinear_matrix

FEATURE_DIM = 2048
RESOLUTION = 299
MIN_RESOLUTION = 75
NPZ_FORMAT = "jaxdiff-inception-2015-12-05-v1"
EXPECTED_FORMAT = (
    "pytorch-fid's pt_inception-2015-12-05-6726825d.pth (a PyTorch state dict of the FID "
    "InceptionV3) or a .npz holding the same state-dict names and shapes (write it with "
    "`python -m jaxdiff.evaluation.inception --src=FILE.pth --dst=FILE.npz`)")


# ------------------------------------------------------------------ resize

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
  x = jax.ShapeDtypeStruct((1, MIN_RESOLUTION, MIN_RESOLUTION, 3), jnp.float32)
  return weights.flat_shapes(InceptionV3FID(resolution=MIN_RESOLUTION).init, x)


def torch_name(flax_name: str) -> str:
  """'Mixed_5b.branch1x1.kernel' -> 'Mixed_5b.branch1x1.conv.weight' (pytorch-fid's key)."""
  module, leaf = flax_name.rsplit(".", 1)
  return f"{module}.{_TORCH_SUFFIX[leaf]}"


def _to_flax(name: str, value: np.ndarray) -> np.ndarray:
  key = torch_name(name)
  if name.endswith(".kernel"):
    if value.ndim != 4:
      raise weights.WrongValue(f"{key}: shape {value.shape}")
    expected = _oihw(param_shapes()[name])
    if tuple(value.shape) != expected:
      raise weights.WrongValue(f"{key}: shape {tuple(value.shape)}, expected {expected}")
    return weights.oihw_to_hwio(value).astype(np.float32)
  if tuple(value.shape) != param_shapes()[name]:
    raise weights.WrongValue(f"{key}: shape {tuple(value.shape)}, expected "
                             f"{param_shapes()[name]}")
  return value.astype(np.float32)


def params_from_state_dict(state_dict: Mapping[str, Any], source: str = "state dict") -> dict:
  """pytorch-fid state dict (numpy arrays, torch layouts) -> Flax params; validates every key."""
  params, problems = weights.check_state_dict(state_dict, param_shapes(), torch_name, _to_flax)
  if problems:
    raise WeightsFileError(f"{source} is not the FID InceptionV3: {'; '.join(problems)}. "
                           f"Expected {EXPECTED_FORMAT}.")
  return params


def _oihw(hwio: tuple[int, ...]) -> tuple[int, ...]:
  return (hwio[3], hwio[2], hwio[0], hwio[1])


def state_dict_from_params(params) -> dict[str, np.ndarray]:
  """Flax params -> pytorch-fid state dict (numpy, torch layouts): the inverse of the above."""
  out = {}
  for name, leaf in weights.flatten(params).items():
    value = np.asarray(leaf)
    out[torch_name(name)] = weights.hwio_to_oihw(value) if name.endswith(".kernel") else value
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
  return weights.unflatten(flat)


# ------------------------------------------------------------------ files

def save_npz(path: str, state_dict: Mapping[str, np.ndarray]) -> None:
  weights.save_npz(path, state_dict, NPZ_FORMAT)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """A state dict from `.npz` or a PyTorch `.pth`, never executing code from the file."""
  return weights.load_state_dict(path, what="Inception weights file", expected=EXPECTED_FORMAT)


def load_params(path: str) -> dict:
  """Flax params of the FID InceptionV3 from a `.pth` or `.npz` file (see module doc)."""
  return params_from_state_dict(load_state_dict(path), source=path)


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
