"""Writing image datasets as tfds ArrayRecord data sources that training reads without TensorFlow.

Every dataset jaxdiff trains on goes through one builder, `ImageDatasetBuilder`:
a `tfds.core.GeneratorBasedBuilder` whose features are

  image  tfds.features.Tensor(shape=(H, W, C), dtype=uint8, encoding=BYTES)
  label  tfds.features.Scalar(int64)            (0 for unlabelled datasets)

written with `file_format='array_record'`. Why this shape of things
(`shared/design.md`): `tfds.features.Image` needs TensorFlow to *encode*, and
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

Where the examples come from (`jaxdiff.prepare_data` picks one per dataset):

  cifar10_binary_examples   the CIFAR-10 binary tarball (raw bytes, no pickle)
  imagenet_npz_examples     Chrabaszcz et al.'s downsampled ImageNet, the `.npz`
                            zips tfds' `imagenet_resized` uses (no pickle)
  image_folder_examples     an EDM-style image folder or zip, with optional
                            `dataset.json` labels (EDM's dataset_tool layout)
  tfds_examples             any dataset tfds itself can build (needs TensorFlow,
                            the optional `prepare` extra): lsun/cat, celeb_a, ...
  synthetic_examples        generated images, for smoke tests
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tarfile
import types
import zipfile
from typing import Any, Callable, Iterable, Iterator

import numpy as np

VERSION = "1.0.0"
# Bumped if the on-disk layout changes; the reader refuses other values.
FORMAT = "jaxdiff-image-v1"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff")

Example = tuple[str, dict[str, Any]]


class DatasetFormatError(ValueError):
  """An example or a source file that does not have the shape/dtype/layout expected."""


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

  def metadata(self) -> dict:
    return {"format": FORMAT, "name": self.name, "shape": list(self.shape),
            "num_classes": int(self.num_classes), "source": self.source,
            "transform": self.transform}


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
              "image": tfds.features.Tensor(shape=(h, w, c), dtype=np.uint8,
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
        yield index << shift, check_example(name, example, shape, num_classes)

  return ImageDatasetBuilder


def check_example(key: str, example: dict, shape: tuple[int, ...], num_classes: int) -> dict:
  """The example as the builder stores it; a clear error for a wrong shape, dtype or label."""
  image = example.get("image")
  if not isinstance(image, np.ndarray):
    raise DatasetFormatError(f"Example {key!r}: 'image' must be a numpy array, got "
                             f"{type(image).__name__}.")
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


# ------------------------------------------------------------------ resizing

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


# ------------------------------------------------------------------ sources

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


def file_md5(path: str) -> str:
  digest = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()
