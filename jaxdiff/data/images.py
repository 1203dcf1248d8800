"""Image conversions of dataset preparation: to uint8, and the papers' resizes and crops.

Each transform maps an HWC uint8 image to the target resolution the way the
official preparation of that dataset does (EDM's `dataset_tool.py`, ADM's
center crop, the CelebA crop), selected by name (`TRANSFORMS`).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from jaxdiff.errors import DatasetFormatError


def to_uint8_image(image) -> np.ndarray:
  """PIL image or array -> uint8 HWC (grayscale stays 1 channel, anything else becomes RGB)."""
  from PIL import Image
  if isinstance(image, Image.Image):
    if image.mode not in ("L", "RGB"):
      image = image.convert("RGB")
    image = np.asarray(image)
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.dtype != np.uint8:
    raise DatasetFormatError(f"image dtype {image.dtype}; expected uint8.")
  return image


def _pil(image: np.ndarray):
  from PIL import Image
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def resize_lanczos(image: np.ndarray, resolution: int) -> np.ndarray:
  """EDM dataset_tool's plain rescale (no crop): PIL LANCZOS to resolution x resolution."""
  from PIL import Image
  h, w = image.shape[:2]
  if (h, w) == (resolution, resolution):
    return image
  if h != w:
    raise DatasetFormatError(
        f"image of size {w}x{h} is not square; use --transform=center-crop (EDM) or "
        "--transform=adm to crop it.")
  return to_uint8_image(_pil(image).resize((resolution, resolution), Image.LANCZOS))


def center_crop_edm(image: np.ndarray, resolution: int) -> np.ndarray:
  """EDM dataset_tool `--transform=center-crop`: largest centred square, LANCZOS resize."""
  h, w = image.shape[:2]
  crop = min(h, w)
  top, left = (h - crop) // 2, (w - crop) // 2
  return resize_lanczos(image[top:top + crop, left:left + crop], resolution)


def center_crop_adm(image: np.ndarray, resolution: int) -> np.ndarray:
  """ADM / guided-diffusion `center_crop_arr` (used for LSUN and ImageNet by ADM and CM).

  Halve with a BOX filter while the short side is >= 2*resolution, resize with
  BICUBIC so the short side equals `resolution`, then take the centred square.
  """
  from PIL import Image
  img = _pil(image)
  while min(*img.size) >= 2 * resolution:
    img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
  scale = resolution / min(*img.size)
  img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
  arr = to_uint8_image(img)
  top = (arr.shape[0] - resolution) // 2
  left = (arr.shape[1] - resolution) // 2
  return arr[top:top + resolution, left:left + resolution]


def center_crop_celeba(image: np.ndarray, resolution: int, crop: int = 140) -> np.ndarray:
  """CelebA-64 as DDPM/NCSN++ (score_sde) make it: centred 140x140 crop, antialiased bilinear resize."""
  from PIL import Image
  h, w = image.shape[:2]
  top, left = (h - crop) // 2, (w - crop) // 2
  cropped = image[top:top + crop, left:left + crop]
  return to_uint8_image(_pil(cropped).resize((resolution, resolution), Image.BILINEAR))


TRANSFORMS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "none": resize_lanczos,
    "center-crop": center_crop_edm,
    "adm": center_crop_adm,
    "celeba": center_crop_celeba,
}


def get_transform(name: str) -> Callable[[np.ndarray, int], np.ndarray]:
  if name not in TRANSFORMS:
    raise ValueError(f"Unknown transform {name!r}; choose one of {sorted(TRANSFORMS)}.")
  return TRANSFORMS[name]


