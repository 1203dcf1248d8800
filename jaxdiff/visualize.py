"""Pictures a person looks at: image grids and 2-D scatter plots, saved as PNG."""
from __future__ import annotations

import math
import os

import numpy as np


def image_grid(images: np.ndarray, columns: int | None = None, pad: int = 1) -> np.ndarray:
  """NHWC images in [-1, 1] -> one uint8 HxWxC grid."""
  images = np.asarray(images, np.float32)
  n, h, w, c = images.shape
  columns = columns or int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / columns))
  grid = np.zeros((rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.float32)
  for i, img in enumerate(images):
    r, col = divmod(i, columns)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = img
  return np.clip((grid + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def save_image_grid(path: str, images: np.ndarray, scale: int | None = None) -> str:
  from PIL import Image

  grid = image_grid(images)
  if grid.shape[-1] == 1:
    grid = grid[..., 0]
  img = Image.fromarray(grid)
  # Small images (8x8 digits) are upscaled so the PNG is readable on screen.
  scale = scale or max(1, 256 // max(images.shape[1], 1) // 4)
  if scale > 1:
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  img.save(path)
  return path


def save_scatter(path: str, samples: np.ndarray, reference: np.ndarray | None = None,
                 title: str = "") -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5, 5))
  if reference is not None:
    ax.scatter(reference[:, 0], reference[:, 1], s=2, c="lightgray", label="data")
  ax.scatter(samples[:, 0], samples[:, 1], s=2, c="tab:blue", label="samples")
  ax.set_aspect("equal")
  ax.legend(loc="upper right", markerscale=4)
  ax.set_title(title)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)
  return path
