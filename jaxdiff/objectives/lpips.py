"""LPIPS-VGG16 (Zhang et al. 2018, the `lpips` package, version "v0.1") in Flax, weights from files.

The consistency distance of CT (Song et al. 2023; openai/consistency_models
and openai/consistency_models_cifar10) and ACT (Kong et al. 2024; kong13661/ACT,
piq's LPIPS-VGG). For images x, y (NHWC, values in [-1, 1]):

1. Resize both to `resize` x `resize` (CT and ACT: 224) with bilinear
   interpolation as PyTorch's `F.interpolate(mode='bilinear',
   align_corners=False)` computes it (half-pixel centres, border clamped, no
   antialiasing); for upsampling this is also what `jax.image.resize(...,
   'bilinear')` gives, which CT's JAX code uses. `resize=None` (or 0) keeps
   the size. Grayscale (1-channel) images are repeated to 3 channels.
2. lpips' ScalingLayer: (x - shift) / scale with shift = [-.030, -.088, -.188]
   and scale = [.458, .448, .450]. On [-1, 1] inputs this is exactly the
   ImageNet normalisation (u - mean) / std of u = (x + 1) / 2 that piq applies
   to [0, 1] inputs, so lpips' and piq's VGG inputs agree.
3. torchvision's VGG16 `features` (3x3 convs with bias, padding 1, ReLU; 2x2
   max-pools between the five blocks): the outputs relu1_2, relu2_2, relu3_3,
   relu4_3 and relu5_3 (lpips' `vgg16` slices 1-5; the last pool is unused).
4. For each of the five features: unit-normalise over channels
   (f / (||f||_2 + 1e-10), lpips' `normalize_tensor`), take the squared
   difference of x's and y's, weight the channels with the non-negative 1x1
   linear head lin_k (no bias; dropout is off at evaluation), average over
   space; sum over the five layers. Output: one distance per sample, [B].

LPIPS(x, x) is exactly 0. The channel norm has a zero-safe gradient (a
location whose ReLU features are all 0 gets gradient 0 instead of lpips'
0/0 = NaN); the value is unchanged.

Weights are never downloaded. Users fetch two files themselves:

* torchvision's ImageNet VGG16, `vgg16-397923af.pth`:
  https://download.pytorch.org/models/vgg16-397923af.pth
  (what `torchvision.models.vgg16(weights="IMAGENET1K_V1")` loads; keys
  `features.N.weight` / `features.N.bias`, the classifier keys are ignored);
* the LPIPS v0.1 linear heads, `lpips/weights/v0.1/vgg.pth` in the GitHub
  repository richzhang/PerceptualSimilarity (also shipped inside the `lpips`
  pip package at `site-packages/lpips/weights/v0.1/vgg.pth`); keys
  `lin0.model.1.weight` ... `lin4.model.1.weight`, shapes [1, C, 1, 1].

and convert them once into one `.npz`:

    python -m jaxdiff.objectives.lpips --vgg=vgg16-397923af.pth \
        --lin=vgg.pth --out=lpips_vgg.npz

then train with `--config.consistency.metric=lpips
--config.consistency.lpips_weights=lpips_vgg.npz`. The `.pth` files are read by
`jaxdiff.weights`, which never executes code from a file; the `.npz` holds the
same state-dict names and shapes as numpy arrays and is read with
`np.load(allow_pickle=False)`. A missing file, missing keys, wrong shapes,
negative linear heads or a truncated file raise `WeightsFileError` naming the
expected format and the converter command.

`random_params()` gives random weights of the right shapes, for tests only.
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
from jaxdiff.resize import resize_separable, torch_bilinear_matrix

NPZ_FORMAT = "jaxdiff-lpips-vgg16-v0.1-v1"
RESOLUTION = 224          # CT and ACT upsample to 224 x 224 before LPIPS
MIN_RESOLUTION = 16       # four 2x2 pools: relu5_3 is at least 1 x 1
NORM_EPS = 1e-10          # lpips.normalize_tensor

# lpips.ScalingLayer (on [-1, 1] inputs).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)

# VGG16 conv widths per block; torchvision `features` indices of those convs.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
FEATURE_CHANNELS = tuple(b[-1] for b in VGG16_BLOCKS)  # channels of relu1_2 .. relu5_3

CONVERT_COMMAND = ("python -m jaxdiff.objectives.lpips --vgg=vgg16-397923af.pth "
                   "--lin=vgg.pth --out=lpips_vgg.npz")
EXPECTED_FORMAT = (
    "a .npz written by the LPIPS converter, holding torchvision's VGG16 `features.N.weight/bias` "
    "(from vgg16-397923af.pth, https://download.pytorch.org/models/vgg16-397923af.pth) and the "
    "lpips v0.1 heads `lin0.model.1.weight` ... `lin4.model.1.weight` (from "
    "lpips/weights/v0.1/vgg.pth in github.com/richzhang/PerceptualSimilarity). Make it with "
    f"`{CONVERT_COMMAND}`")


# ------------------------------------------------------------------ resize

def resize_bilinear(images: jax.Array, size: int) -> jax.Array:
  """NHWC -> [N, size, size, C], PyTorch's bilinear (align_corners=False, no antialias)."""
  return resize_separable(images, size, torch_bilinear_matrix)


# ------------------------------------------------------------------ network

def normalize_channels(feat: jax.Array, eps: float = NORM_EPS) -> jax.Array:
  """f / (||f||_2 over channels + eps), lpips' `normalize_tensor`, with a zero-safe gradient."""
  sq = jnp.sum(jnp.square(feat), axis=-1, keepdims=True)
  positive = sq > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
  return feat / (norm + eps)


class VGG16Features(nn.Module):
  """torchvision VGG16 `features` up to relu5_3: NHWC -> [relu1_2, ..., relu5_3]."""
  precision: Any = None

  @nn.compact
  def __call__(self, x) -> list[jax.Array]:
    feats = []
    for b, widths in enumerate(VGG16_BLOCKS):
      if b:
        x = nn.max_pool(x, (2, 2), (2, 2), "VALID")
      for i, width in enumerate(widths):
        x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), precision=self.precision,
                    name=f"conv{b + 1}_{i + 1}")(x)
        x = nn.relu(x)
      feats.append(x)
    return feats


def _nonneg_init(key, shape, dtype=jnp.float32):
  return jnp.abs(jax.random.normal(key, shape, dtype)) / shape[-1]


class LPIPS(nn.Module):
  """(x, y) NHWC in [-1, 1], 1 or 3 channels -> LPIPS-VGG16 v0.1 distance per sample, [B]."""
  resize: int | None = RESOLUTION
  precision: Any = None

  def prepare(self, x: jax.Array) -> jax.Array:
    """Resize (bilinear), grayscale -> RGB, then lpips' ScalingLayer."""
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
      raise ValueError(f"LPIPS needs NHWC images with 1 or 3 channels; got shape {x.shape}.")
    x = x.astype(jnp.float32)
    if self.resize:
      x = resize_bilinear(x, int(self.resize))
    if min(x.shape[1:3]) < MIN_RESOLUTION:
      raise ValueError(f"LPIPS-VGG16 needs images of at least {MIN_RESOLUTION}x{MIN_RESOLUTION} "
                       f"(got {x.shape[1]}x{x.shape[2]}); resize them (CT/ACT: 224).")
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    return (x - jnp.asarray(SHIFT, jnp.float32)) / jnp.asarray(SCALE, jnp.float32)

  @nn.compact
  def __call__(self, x, y):
    if x.shape != y.shape:
      raise ValueError(f"LPIPS compares images of one shape; got {x.shape} and {y.shape}.")
    batch = x.shape[0]
    # One batch through every op (resize included): each image goes through the same ops, so
    # LPIPS(x, x) is exactly 0, also inside jit.
    feats = VGG16Features(self.precision, name="vgg")(
        self.prepare(jnp.concatenate([x, y], axis=0)))
    total = jnp.zeros((batch,), jnp.float32)
    for k, feat in enumerate(feats):
      weight = self.param(f"lin{k}", _nonneg_init, (feat.shape[-1],))
      f = normalize_channels(feat)
      diff = jnp.square(f[:batch] - f[batch:])
      # The 1x1 head as an elementwise product and a channel sum (not a dot: XLA may lower a
      # dot of an exact zero to a tiny non-zero, and this is as fast for one output channel).
      total = total + jnp.mean(jnp.sum(diff * weight, axis=-1), axis=(1, 2))
    return total


def lpips_distance(params, x: jax.Array, y: jax.Array, resize: int | None = RESOLUTION,
                   precision: Any = None) -> jax.Array:
  """LPIPS-VGG16 v0.1 of NHWC images in [-1, 1] (1 or 3 channels): [B] (see module doc).

  `params` are `load_params(path)` (or `random_params()` in tests); `resize`
  is the side both images are bilinearly resized to first (None or 0: none).
  """
  return LPIPS(resize=resize, precision=precision).apply({"params": params}, x, y)


# ------------------------------------------------------------------ parameters

def _conv_names() -> list[str]:
  return [f"conv{b + 1}_{i + 1}" for b, widths in enumerate(VGG16_BLOCKS)
          for i in range(len(widths))]


@functools.lru_cache(maxsize=1)
def param_shapes() -> dict[str, tuple[int, ...]]:
  """Flat 'vgg.conv1_1.kernel' / 'lin0' -> Flax shape, from the network definition (no compute)."""
  x = jax.ShapeDtypeStruct((1, MIN_RESOLUTION, MIN_RESOLUTION, 3), jnp.float32)
  return weights.flat_shapes(LPIPS(resize=None).init, x, x)


def torch_name(flax_name: str) -> str:
  """'vgg.conv2_1.kernel' -> 'features.5.weight'; 'lin3' -> 'lin3.model.1.weight'."""
  if flax_name.startswith("lin"):
    return f"{flax_name}.model.1.weight"
  _, conv, leaf = flax_name.split(".")
  index = TORCHVISION_CONV_INDICES[_conv_names().index(conv)]
  return f"features.{index}.{'weight' if leaf == 'kernel' else 'bias'}"


def torch_shape(flax_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  if flax_name.startswith("lin"):
    return (1, shape[0], 1, 1)
  if flax_name.endswith(".kernel"):
    return (shape[3], shape[2], shape[0], shape[1])  # HWIO -> OIHW
  return shape


def _to_flax(name: str, value: np.ndarray) -> np.ndarray:
  shape = param_shapes()[name]
  expected = torch_shape(name, shape)
  if tuple(value.shape) != expected or not np.issubdtype(value.dtype, np.floating):
    raise weights.WrongValue(f"{torch_name(name)}: {value.dtype} {tuple(value.shape)}, "
                             f"expected float {expected}")
  value = value.astype(np.float32)
  if name.startswith("lin"):
    return value.reshape(shape)
  return weights.oihw_to_hwio(value) if name.endswith(".kernel") else value


def params_from_state_dict(state_dict: Mapping[str, Any], source: str = "state dict") -> dict:
  """torchvision VGG16 + lpips head state dict (numpy, torch layouts) -> Flax params (validated)."""
  params, problems = weights.check_state_dict(state_dict, param_shapes(), torch_name, _to_flax)
  negative = [torch_name(name) for name, value in weights.flatten(params).items()
              if name.startswith("lin") and np.any(value < 0)]
  if negative:
    problems.append(f"negative linear-head weights in {', '.join(negative)} (LPIPS' heads are "
                    "non-negative)")
  if problems:
    raise WeightsFileError(f"{source} is not LPIPS-VGG16 v0.1: {'; '.join(problems)}. "
                           f"Expected {EXPECTED_FORMAT}.")
  return params


def state_dict_from_params(params) -> dict[str, np.ndarray]:
  """Flax params -> the combined torch state dict (numpy): the inverse of the above."""
  out = {}
  for name, leaf in weights.flatten(params).items():
    value = np.asarray(leaf, np.float32)
    if name.startswith("lin"):
      value = value.reshape(torch_shape(name, value.shape))
    elif name.endswith(".kernel"):
      value = weights.hwio_to_oihw(value)
    out[torch_name(name)] = value
  return out


def random_params(seed: int = 0) -> dict:
  """Random weights (He-normal kernels, small biases, non-negative heads) with numpy; tests only."""
  rng = np.random.default_rng(seed)
  flat = {}
  for name, shape in param_shapes().items():
    if name.startswith("lin"):
      flat[name] = (np.abs(rng.standard_normal(shape)) / shape[0]).astype(np.float32)
    elif name.endswith(".kernel"):
      fan_in = shape[0] * shape[1] * shape[2]
      flat[name] = (rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2.0 / fan_in)))
    else:
      flat[name] = (0.01 * rng.standard_normal(shape)).astype(np.float32)
  return weights.unflatten(flat)


# ------------------------------------------------------------------ files

def save_npz(path: str, state_dict: Mapping[str, np.ndarray]) -> None:
  weights.save_npz(path, state_dict, NPZ_FORMAT)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """The combined state dict from our `.npz` (never unpickles)."""
  return weights.load_state_dict(path, what="LPIPS weights", expected=EXPECTED_FORMAT,
                                 npz_format=NPZ_FORMAT, allow_pth=False)


def load_params(path: str) -> dict:
  """Flax params (numpy) of LPIPS-VGG16 v0.1 from the converter's `.npz` (see module doc)."""
  return params_from_state_dict(load_state_dict(path), source=path)


def _read_pth(path: str, what: str) -> dict[str, np.ndarray]:
  try:
    return weights.load_state_dict(path, what=what, expected=EXPECTED_FORMAT)
  except WeightsFileError as e:
    raise WeightsFileError(f"{path} ({what}): {e}") from e


def convert(vgg_path: str, lin_path: str, out_path: str) -> dict[str, np.ndarray]:
  """torchvision's vgg16-397923af.pth + lpips' v0.1 vgg.pth -> one validated `.npz`."""
  vgg = _read_pth(vgg_path, "torchvision VGG16 weights (vgg16-397923af.pth)")
  lin = _read_pth(lin_path, "lpips v0.1 linear heads (lpips/weights/v0.1/vgg.pth)")
  names = [torch_name(n) for n in param_shapes()]
  combined = {k: v for k, v in vgg.items() if k.startswith("features.")}
  combined.update({k: v for k, v in lin.items() if k.startswith("lin")})
  params_from_state_dict(combined, source=f"{vgg_path} + {lin_path}")  # validate before writing
  keep = {k: np.asarray(combined[k], np.float32) for k in names}
  save_npz(out_path, keep)
  return keep


def main(argv):
  from absl import flags
  del argv
  f = flags.FLAGS
  convert(f.vgg, f.lin, f.out)
  print(f"wrote {f.out}; use it with --config.consistency.metric=lpips "
        f"--config.consistency.lpips_weights={f.out}")


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("vgg", None, "torchvision's vgg16-397923af.pth.")
  flags.DEFINE_string("lin", None, "lpips' lpips/weights/v0.1/vgg.pth.")
  flags.DEFINE_string("out", None, "Output .npz.")
  flags.mark_flags_as_required(["vgg", "lin", "out"])
  app.run(main)
