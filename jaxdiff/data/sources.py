"""Where the examples of a dataset come from (`jaxdiff.prepare_data` picks one per dataset).

  cifar10_binary_examples   the CIFAR-10 binary tarball (raw bytes, no pickle)
  imagenet_npz_examples     Chrabaszcz et al.'s downsampled ImageNet, the `.npz`
                            zips tfds' `imagenet_resized` uses (no pickle)
  image_folder_examples     an EDM-style image folder or zip, with optional
                            `dataset.json` labels (EDM's dataset_tool layout)
  tfds_examples             any dataset tfds itself can build (needs TensorFlow,
                            the optional `prepare` extra): lsun/cat, celeb_a, ...
  synthetic_examples        generated images, for smoke tests

Each yields (key, {"image": HWC uint8, "label": int}) pairs for `builders.write_dataset`.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from typing import Iterable, Iterator

import numpy as np

from jaxdiff.data.builders import IMAGE_EXTENSIONS, Example, ImageDatasetInfo
from jaxdiff.data.images import get_transform, to_uint8_image
from jaxdiff.errors import DatasetFormatError


CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_RECORD = 1 + 32 * 32 * 3


def cifar10_binary_examples(tar_path: str, records_per_file: int = 10000) -> Iterator[Example]:
  """CIFAR-10's 50,000 training images from `cifar-10-binary.tar.gz` (raw bytes, no pickle).

  Each record is 1 label byte then 3072 pixel bytes in CHW order (1024 R, G, B);
  each of the five training files holds 10,000 records (`records_per_file`
  exists so tests can use tiny archives).
  """
  if not os.path.exists(tar_path):
    raise FileNotFoundError(f"CIFAR-10 binary archive not found: {tar_path}")
  try:
    with tarfile.open(tar_path, "r:*") as tar:
      members = {os.path.basename(m.name): m for m in tar.getmembers()}
      missing = [b for b in CIFAR10_TRAIN_FILES if b not in members]
      if missing:
        raise DatasetFormatError(f"{tar_path} lacks {missing}; expected cifar-10-binary.tar.gz "
                                 "(the binary version, not the python/matlab one).")
      # data_batch_1..5 in order (as torchvision and tfds read them), whatever the archive order.
      for base in CIFAR10_TRAIN_FILES:
        member = members[base]
        data = tar.extractfile(member).read()
        n = records_per_file
        if len(data) != n * _CIFAR_RECORD:
          raise DatasetFormatError(
              f"{tar_path}:{member.name} has {len(data)} bytes; a CIFAR-10 binary batch holds "
              f"{n} records of {_CIFAR_RECORD} bytes. Is this cifar-10-binary.tar.gz?")
        records = np.frombuffer(data, np.uint8).reshape(n, _CIFAR_RECORD)
        images = records[:, 1:].reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)
        for i in range(n):
          yield f"{base}:{i}", {"image": np.ascontiguousarray(images[i]),
                                "label": int(records[i, 0])}
  except tarfile.TarError as e:
    raise DatasetFormatError(f"{tar_path} is not a readable tar archive ({e}); expected "
                             "cifar-10-binary.tar.gz.") from e


IMAGENET64_TRAIN_ZIPS = ("Imagenet64_train_part1_npz.zip", "Imagenet64_train_part2_npz.zip")


def imagenet_npz_examples(paths: Iterable[str], size: int = 64) -> Iterator[Example]:
  """Downsampled ImageNet (Chrabaszcz et al. 2017) from its `_npz.zip` parts, no pickle.

  Each `.npz` holds 'data' [N, 3*size*size] uint8 (CHW, flattened) and 'labels'
  1..1000; labels are shifted to 0..999 as tfds' imagenet_resized does.
  """
  for path in paths:
    with zipfile.ZipFile(path) as zf:
      for member in sorted(zf.namelist()):
        if not member.endswith(".npz"):
          continue
        with zf.open(member) as f:
          data = np.load(io.BytesIO(f.read()), allow_pickle=False)
          images, labels = data["data"], data["labels"]
        if images.ndim != 2 or images.shape[1] != 3 * size * size:
          raise DatasetFormatError(f"{path}:{member}: 'data' has shape {images.shape}; expected "
                                   f"[N, {3 * size * size}] for {size}x{size} images.")
        images = images.reshape(-1, 3, size, size).transpose(0, 2, 3, 1)
        for i in range(len(images)):
          yield f"{os.path.basename(path)}:{member}:{i}", {
              "image": np.ascontiguousarray(images[i]), "label": int(labels[i]) - 1}


class _ImageSource:
  """Files of an image folder or zip, listed in sorted order (EDM's dataset_tool order)."""

  def __init__(self, path: str):
    self.path = path
    self.is_zip = os.path.isfile(path) and zipfile.is_zipfile(path)
    if self.is_zip:
      self._zip = zipfile.ZipFile(path)
      names = self._zip.namelist()
    elif os.path.isdir(path):
      self._zip = None
      names = [os.path.relpath(os.path.join(root, f), path).replace(os.sep, "/")
               for root, _, files in os.walk(path) for f in files]
    else:
      raise FileNotFoundError(f"--source={path} is neither a directory nor a zip file.")
    self.files = sorted(n for n in names if n.lower().endswith(IMAGE_EXTENSIONS))
    self.names = set(names)

  def read(self, name: str) -> bytes:
    if self._zip is not None:
      return self._zip.read(name)
    with open(os.path.join(self.path, name), "rb") as f:
      return f.read()

  def labels(self) -> dict[str, int] | None:
    """EDM dataset.json: {"labels": [[relative_path, label], ...]} or {"labels": null}."""
    if "dataset.json" not in self.names:
      return None
    meta = json.loads(self.read("dataset.json"))
    labels = meta.get("labels")
    if labels is None:
      return None
    return {str(name).replace("\\", "/"): int(label) for name, label in labels}


def _decode(data: bytes, where: str) -> np.ndarray:
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(io.BytesIO(data)) as img:
      img.load()
      return to_uint8_image(img)
  except (UnidentifiedImageError, OSError) as e:
    raise DatasetFormatError(f"{where} is not a readable image ({e}).") from e


def probe_image_folder(path: str, resolution: int | None = None,
                       transform: str = "none") -> tuple[tuple[int, int, int], int, int]:
  """(shape, num_classes, num_images) of an image folder/zip import, from its first image."""
  src = _ImageSource(path)
  if not src.files:
    raise DatasetFormatError(f"--source={path} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
  first = _decode(src.read(src.files[0]), f"{path}/{src.files[0]}")
  if resolution:
    first = get_transform(transform)(first, resolution)
  labels = src.labels()
  num_classes = (max(labels.values()) + 1) if labels else 0
  return tuple(first.shape), num_classes, len(src.files)


def image_folder_examples(path: str, resolution: int | None = None,
                          transform: str = "none") -> Iterator[Example]:
  """An EDM-style dataset: an image folder or zip (any nesting), optional dataset.json labels.

  Images are taken in sorted relative-path order, as EDM's dataset_tool does.
  With `resolution`, each image goes through `TRANSFORMS[transform]`; without,
  all images must already share one size.
  """
  src = _ImageSource(path)
  labels = src.labels()
  fn = get_transform(transform) if resolution else None
  for name in src.files:
    image = _decode(src.read(name), f"{path}/{name}")
    if fn is not None:
      image = fn(image, resolution)
    if labels is not None and name not in labels:
      raise DatasetFormatError(f"{path}/dataset.json has no label for {name!r}.")
    yield name, {"image": image, "label": labels[name] if labels is not None else 0}


def tfds_examples(tfds_name: str, tfds_data_dir: str | None, resolution: int | None,
                  transform: str, split: str = "train") -> Iterator[Example]:
  """Examples of a dataset tfds itself builds (downloading as tfds does). Needs TensorFlow.

  This is the one place jaxdiff may use TensorFlow: tfds' own builders of
  lsun, celeb_a, ... encode JPEG/PNG `Image` features. Install the optional
  extra with `pip install -e ".[prepare]"`. Training never imports it.
  """
  try:
    import tensorflow  # noqa: F401  (only to give a clear error)
  except ImportError as e:
    raise ImportError(
        f"Preparing {tfds_name!r} through tfds' own builder needs TensorFlow, which training "
        "does not: install it for this one step with `pip install -e \".[prepare]\"`, or "
        "export the images to a folder and pass --source=FOLDER instead.") from e
  import tensorflow_datasets as tfds
  ds = tfds.load(tfds_name, split=split, data_dir=tfds_data_dir, shuffle_files=False)
  fn = get_transform(transform) if resolution else None
  for i, ex in enumerate(tfds.as_numpy(ds)):
    image = to_uint8_image(ex["image"])
    if fn is not None:
      image = fn(image, resolution)
    yield f"{tfds_name}:{i}", {"image": image, "label": int(ex.get("label", 0))}


def synthetic_examples(num_examples: int, shape: tuple[int, int, int], num_classes: int = 0,
                       seed: int = 0) -> Iterator[Example]:
  """Deterministic generated images: a class-dependent colour blob on a noisy background."""
  h, w, c = shape
  yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
  for i in range(num_examples):
    rng = np.random.default_rng([seed, i])
    label = int(rng.integers(num_classes)) if num_classes else 0
    cy, cx = rng.uniform(-0.5, 0.5, 2)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.15)
    colour = np.random.default_rng([seed, 1000 + label]).uniform(0.3, 1.0, c)
    img = 0.15 * rng.random((h, w, c)) + blob[..., None] * colour
    yield f"synthetic:{i}", {"image": np.clip(img * 255, 0, 255).astype(np.uint8),
                             "label": label}


def synthetic_source(name: str, resolution: int, num_classes: int, num_examples: int):
  """(examples, info) of a generated dataset: the smoke recipes' stand-in for a real one."""
  shape = (resolution, resolution, 3)
  info = ImageDatasetInfo(name, shape, num_classes, source="generated (synthetic blobs)",
                          transform="none", num_examples_hint=num_examples)
  return (lambda: synthetic_examples(num_examples, shape, num_classes)), info


