"""Random-access reading of a prepared dataset (tfds ArrayRecord), without TensorFlow.

`open_dataset(config.data)` opens `<data_dir>/<tfds_name>/<version>/` written by
`jaxdiff.prepare_data` and returns an object with `num_examples`,
`example_shape` and `get(indices) -> {'image': float32 NHWC in [-1, 1],
'label': int32}`, the interface `pipeline.StepBatcher` draws the per-step,
per-process batches from. Nothing is ever downloaded here: a dataset that is
not prepared fails at once with the directory searched and the command that
prepares it. The one exception is `synthetic`, which is generated (no
download) on first use so smoke recipes run anywhere.
"""
from __future__ import annotations

import json
import os

import numpy as np

from jaxdiff.data import builders, sources
from jaxdiff.data.catalog import DATA_DIR_ENV, RECIPES, prepare_command, resolve_data_dir
from jaxdiff.errors import MissingDatasetError  # noqa: F401  (raised here)


def _available(data_dir: str) -> list[str]:
  """Names of the datasets prepared in data_dir (for the error message)."""
  found = []
  if not os.path.isdir(data_dir):
    return found
  for root, dirs, files in os.walk(data_dir):
    if "dataset_info.json" in files:
      rel = os.path.relpath(os.path.dirname(root), data_dir)
      found.append(f"{rel.replace(os.sep, '/')} ({os.path.basename(root)})")
      dirs[:] = []
    elif root.count(os.sep) - data_dir.count(os.sep) >= 3:
      dirs[:] = []
  return sorted(found)


def missing_message(name: str, data_dir: str, path: str) -> str:
  have = _available(data_dir)
  listing = ("prepared there: " + ", ".join(have)) if have else "nothing is prepared there yet"
  return (f"Dataset {name!r} (config.data.tfds_name) is not prepared: looked for {path} in the "
          f"data dir {data_dir} (config.data.data_dir, else ${DATA_DIR_ENV}, else "
          f"~/jaxdiff_datasets); {listing}. Training never downloads; prepare it once with:\n"
          f"  {prepare_command(name, data_dir)}")


class TfdsImageDataset:
  """A prepared image dataset, read by index with `tfds` data sources (no TensorFlow)."""

  FORMAT, DTYPE = builders.FORMAT, np.uint8

  def __init__(self, path: str, with_labels: bool, num_classes: int = 0):
    import tensorflow_datasets as tfds
    self.path = path
    builder = tfds.builder_from_directory(path)
    features = builder.info.features
    self.metadata = _read_metadata(path)
    image = features["image"] if "image" in features else None
    if (image is None or type(image).__name__ != "Tensor"
        or np.dtype(image.np_dtype) != self.DTYPE
        or len(image.shape) != 3 or self.metadata.get("format") != self.FORMAT):
      raise builders.DatasetFormatError(
          f"{path} was not written by jaxdiff.prepare_data (features {features!r}, metadata "
          f"format {self.metadata.get('format')!r}; expected a {np.dtype(self.DTYPE)} Tensor "
          f"'image' of rank 3 and format {self.FORMAT!r}). Prepare it with `python -m "
          "jaxdiff.prepare_data`.")
    self.example_shape = self.stored_shape = tuple(int(s) for s in image.shape)
    if self.DTYPE == np.uint8 and self.example_shape[-1] not in (1, 3):
      raise builders.DatasetFormatError(
          f"{path}: images have {self.example_shape[-1]} channels; expected 1 or 3.")
    self.dataset_num_classes = int(self.metadata.get("num_classes", 0))
    self.with_labels = with_labels
    if with_labels:
      if not self.dataset_num_classes:
        raise builders.DatasetFormatError(
            f"config.data.num_classes={num_classes} asks for labels, but {path} is unlabelled; "
            "set --config.data.num_classes=0 or prepare a labelled dataset (dataset.json).")
      if num_classes != self.dataset_num_classes:
        raise builders.DatasetFormatError(
            f"config.data.num_classes={num_classes} but {path} has {self.dataset_num_classes} "
            f"classes; set --config.data.num_classes={self.dataset_num_classes}.")
    self._source = builder.as_data_source(split="train")
    self.num_examples = len(self._source)

  def get_uint8(self, indices) -> dict[str, np.ndarray]:
    """The raw examples: 'image' uint8 [N, H, W, C] (float32 for latents), 'label' int32 [N]."""
    indices = [int(i) for i in np.asarray(indices).reshape(-1)]
    records = self._source.__getitems__(indices)
    images = np.stack([r["image"] for r in records]) if records else np.zeros(
        (0,) + self.stored_shape, self.DTYPE)
    if images.dtype != self.DTYPE or images.shape[1:] != self.stored_shape:
      raise builders.DatasetFormatError(
          f"{self.path}: read images of shape {images.shape[1:]} and dtype {images.dtype}; the "
          f"dataset declares {self.stored_shape} {np.dtype(self.DTYPE)}.")
    labels = np.asarray([r["label"] for r in records], np.int32)
    return {"image": images, "label": labels}

  def all_labels(self, chunk: int = 4096) -> np.ndarray:
    """Every example's label, int32 [N]: read once (the records hold image and label
    together) and kept beside the dataset as labels.npy for the next run."""
    if not self.with_labels:
      raise builders.DatasetFormatError(
          f"same-class references need labels; {self.path} is read without them "
          "(config.data.num_classes=0).")
    cache = os.path.join(self.path, "labels.npy")
    if os.path.exists(cache):
      labels = np.load(cache, allow_pickle=False)
      if labels.shape == (self.num_examples,):
        return labels
    labels = np.concatenate([
        self.get_uint8(np.arange(a, min(a + chunk, self.num_examples)))["label"]
        for a in range(0, self.num_examples, chunk)]).astype(np.int32)
    try:
      tmp = f"{cache}.{os.getpid()}.tmp.npy"   # processes of one job may race: each its own
      np.save(tmp, labels)
      os.replace(tmp, cache)
    except OSError:  # a read-only dataset directory: read again next time
      pass
    return labels

  def get(self, indices) -> dict[str, np.ndarray]:
    raw = self.get_uint8(indices)
    # uint8 -> [-1, 1] exactly as EDM's training loop: x / 127.5 - 1 (in place: no temporaries).
    image = raw["image"].astype(np.float32)
    np.divide(image, np.float32(127.5), out=image)
    np.subtract(image, np.float32(1.0), out=image)
    out = {"image": image}
    if self.with_labels:
      out["label"] = raw["label"]
    return out


class TfdsLatentSource(TfdsImageDataset):
  """The float32 records of a latent dataset (jaxdiff.data.latents reads them)."""

  FORMAT, DTYPE = builders.LATENT_FORMAT, np.float32

  def get_raw(self, indices) -> dict[str, np.ndarray]:
    out = self.get_uint8(indices)
    if not self.with_labels:
      del out["label"]
    return out


def _read_metadata(path: str) -> dict:
  meta_path = os.path.join(path, "metadata.json")
  if not os.path.exists(meta_path):
    return {}
  with open(meta_path) as f:
    meta = json.load(f)
  return meta.get("jaxdiff", meta)


def open_dataset(data_config) -> TfdsImageDataset:
  """The prepared dataset `data_config.tfds_name` in `data_config.data_dir` (see module doc)."""
  name = data_config.tfds_name
  data_dir = resolve_data_dir(data_config.data_dir)
  path = builders.dataset_dir(data_dir, name)
  if not os.path.exists(os.path.join(path, "dataset_info.json")):
    if name.split("/")[0] == "synthetic":
      # Generated, not downloaded: the smoke recipes' stand-in for a real dataset,
      # written through the same builder as every other dataset.
      examples, info = sources.synthetic_source(name, int(data_config.image_size),
                                                 RECIPES["synthetic"].num_classes, 256)
      builders.write_dataset(data_dir, info, examples)
    else:
      raise MissingDatasetError(missing_message(name, data_dir, path))
  num_classes = int(data_config.num_classes)
  if _read_metadata(path).get("format") == builders.LATENT_FORMAT:
    from jaxdiff.data import latents
    source = TfdsLatentSource(path, with_labels=num_classes > 0, num_classes=num_classes)
    return latents.LatentDataset(source, source.metadata, path)
  return TfdsImageDataset(path, with_labels=num_classes > 0, num_classes=num_classes)
