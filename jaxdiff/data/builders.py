"""Writing image datasets as tfds ArrayRecord data sources that training reads without TensorFlow.

Every dataset jaxdiff trains on goes through one builder, `ImageDatasetBuilder`:
a `tfds.core.GeneratorBasedBuilder` whose features are

  image  tfds.features.Tensor(shape=(H, W, C), dtype=uint8, encoding=BYTES)
  label  tfds.features.Scalar(int64)            (0 for unlabelled datasets)

written with `file_format='array_record'`. Why this shape of things:
`tfds.features.Image` needs TensorFlow to *encode*, and
`tfds.load` cannot read ArrayRecord, but a `Tensor` feature is serialised by
tfds itself and an ArrayRecord split is read by `tfds.data_source` with random
access and no TensorFlow. `encoding=BYTES` stores the pixels as one byte
string (the default packs every uint8 into an int64 varint: 1.5x larger on
disk and ~4x slower to decode, measured on 32x32 images).

The output is the standard tfds directory `<data_dir>/<name>/<version>/`, where
a name with a config such as `imagenet_resized/64x64` becomes
`<data_dir>/imagenet_resized/64x64/<version>/`, as tfds lays out its own
datasets. The builder records how the images were made (source, resize
method, resolution, number of classes) in the dataset's `metadata.json`.

The examples come from `sources.py`, the resizes and crops from `images.py`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import types
from typing import Any, Callable, Iterable

import numpy as np

from jaxdiff.errors import DatasetFormatError  # noqa: F401  (raised here, and by sources.py)

VERSION = "1.0.0"
# Bumped if the on-disk layout changes; the reader refuses other values.
FORMAT = "jaxdiff-image-v1"
# Latents of an autoencoder (jaxdiff.data.latents): float32 posterior moments.
LATENT_FORMAT = "jaxdiff-latent-v1"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff")

Example = tuple[str, dict[str, Any]]


# ------------------------------------------------------------------ the builder

@dataclasses.dataclass(frozen=True)
class ImageDatasetInfo:
  """What one prepared dataset holds; saved in its metadata.json."""
  name: str                      # e.g. "cifar10", "imagenet_resized/64x64"
  shape: tuple[int, int, int]    # (H, W, C), C in {1, 3}
  num_classes: int = 0           # 0: unlabelled (every label is 0)
  source: str = ""               # where the pixels came from (human-readable)
  transform: str = "none"        # how they were cropped/resized
  description: str = ""
  # An upper bound on the number of examples (0: unknown). It spreads the
  # ordering keys over tfds' 128-bit key space, so its on-disk sort buckets
  # stay small instead of holding the whole dataset in one bucket in memory.
  num_examples_hint: int = 0
  # "uint8" pixels, or "float32" for latents (then `extra` says what the channels hold).
  dtype: str = "uint8"
  extra: tuple[tuple[str, Any], ...] = ()

  def metadata(self) -> dict:
    return {"format": FORMAT if self.dtype == "uint8" else LATENT_FORMAT, "name": self.name,
            "shape": list(self.shape), "num_classes": int(self.num_classes),
            "source": self.source, "transform": self.transform, **dict(self.extra)}


def split_name(name: str) -> tuple[str, str | None]:
  """'imagenet_resized/64x64' -> ('imagenet_resized', '64x64'); 'cifar10' -> ('cifar10', None)."""
  parts = name.split("/")
  if len(parts) > 2 or not all(parts):
    raise ValueError(f"Dataset name {name!r} must be 'name' or 'name/config'.")
  for part in parts:
    if not all(ch.isalnum() or ch in "_-." for ch in part):
      raise ValueError(f"Dataset name {name!r} may use only letters, digits, '_', '-', '.' and "
                       "one '/'.")
  return parts[0], (parts[1] if len(parts) == 2 else None)


def dataset_dir(data_dir: str, name: str, version: str = VERSION) -> str:
  """The directory tfds writes (and the reader opens) for `name`."""
  builder, config = split_name(name)
  parts = [data_dir, builder] + ([config] if config else []) + [version]
  return os.path.join(*parts)


def _base_builder():
  import tensorflow_datasets as tfds  # deferred: importing tfds is slow

  class ImageDatasetBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """One split ('train') of uint8 images and int64 labels, written as ArrayRecord."""

    VERSION = tfds.core.Version(VERSION)
    def __init__(self, *, info: ImageDatasetInfo, examples: Callable[[], Iterable[Example]],
                 **kwargs):
      self._jd_info = info
      self._examples = examples
      super().__init__(**kwargs)

    def _info(self):
      h, w, c = self._jd_info.shape
      return tfds.core.DatasetInfo(
          builder=self,
          description=self._jd_info.description or f"{self._jd_info.name} prepared by jaxdiff",
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Tensor(shape=(h, w, c),
                                            dtype=np.dtype(self._jd_info.dtype),
                                            encoding=tfds.features.Encoding.BYTES),
              "label": tfds.features.Scalar(dtype=np.int64),
          }),
          metadata=tfds.core.MetadataDict(jaxdiff=self._jd_info.metadata()),
          # Keep the source order (EDM's sorted file order): index i is the
          # i-th source image, so a prepared dataset can be checked against its
          # source. Training order comes from seeded per-epoch permutations.
          disable_shuffling=True,
      )

    def _split_generators(self, dl_manager):
      del dl_manager  # sources are read by the example functions, never downloaded here
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      shape = tuple(self._jd_info.shape)
      num_classes = self._jd_info.num_classes
      # Integer keys: with shuffling disabled tfds writes in key order.
      # Keys index << shift stay below 2**128 for index < bound.
      bound = 2 * max(int(self._jd_info.num_examples_hint), 1 << 20)
      shift = 128 - bound.bit_length()
      for index, (name, example) in enumerate(self._examples()):
        if index >= bound:
          raise DatasetFormatError(
              f"The source yields more than {bound} examples, twice the announced "
              f"{self._jd_info.num_examples_hint}; pass a larger num_examples_hint.")
        yield index << shift, check_example(name, example, shape, num_classes,
                                            self._jd_info.dtype)

  return ImageDatasetBuilder


def check_example(key: str, example: dict, shape: tuple[int, ...], num_classes: int,
                  dtype: str = "uint8") -> dict:
  """The example as the builder stores it; a clear error for a wrong shape, dtype or label."""
  image = example.get("image")
  if not isinstance(image, np.ndarray):
    raise DatasetFormatError(f"Example {key!r}: 'image' must be a numpy array, got "
                             f"{type(image).__name__}.")
  if dtype != "uint8":
    if image.dtype != np.dtype(dtype) or tuple(image.shape) != tuple(shape):
      raise DatasetFormatError(f"Example {key!r}: latents of shape {image.shape} and dtype "
                               f"{image.dtype}; expected {tuple(shape)} {dtype}.")
    return {"image": image, "label": int(example.get("label", 0))}
  if image.dtype != np.uint8:
    raise DatasetFormatError(
        f"Example {key!r}: image dtype is {image.dtype}, expected uint8 (values 0..255). Convert "
        "with np.clip(np.round(x), 0, 255).astype(np.uint8) before writing.")
  if image.ndim == 2 and shape[2] == 1:
    image = image[..., None]
  if tuple(image.shape) != tuple(shape):
    raise DatasetFormatError(
        f"Example {key!r}: image shape is {tuple(image.shape)}, expected {tuple(shape)} "
        "(H, W, C) like the first image of the dataset. All images must share one size: "
        "pass --resolution (and --transform) to prepare_data to resize them.")
  label = int(example.get("label", 0))
  if num_classes and not 0 <= label < num_classes:
    raise DatasetFormatError(f"Example {key!r}: label {label} is outside [0, {num_classes}).")
  return {"image": image, "label": label}


def builder_class(name: str):
  """An `ImageDatasetBuilder` subclass named like the dataset (tfds derives paths from it)."""
  base = _base_builder()
  import tensorflow_datasets as tfds
  builder, config = split_name(name)
  body: dict[str, Any] = {"name": builder}
  if config:
    body["BUILDER_CONFIGS"] = [tfds.core.BuilderConfig(name=config)]
  return types.new_class(builder, (base,), {"skip_registration": True},
                         lambda ns: ns.update(body))


def write_dataset(data_dir: str, info: ImageDatasetInfo,
                  examples: Callable[[], Iterable[Example]], overwrite: bool = False) -> str:
  """Writes the 'train' split of `info.name` under data_dir; returns its directory.

  An existing complete dataset is kept unless `overwrite` (tfds skips finished
  builds), so rerunning a prepare command is cheap.
  """
  import tensorflow_datasets as tfds
  target = dataset_dir(data_dir, info.name)
  if overwrite and os.path.isdir(target):
    import shutil
    shutil.rmtree(target)
  cls = builder_class(info.name)
  _, config = split_name(info.name)
  kwargs = {"config": config} if config else {}
  builder = cls(info=info, examples=examples, data_dir=data_dir, file_format="array_record",
                **kwargs)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  return str(builder.data_dir)


def file_md5(path: str) -> str:
  digest = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()
