"""Prepare a dataset once, before training: `python -m jaxdiff.prepare_data --dataset=NAME --data_dir=DIR`.

Training never downloads: it opens the prepared tfds ArrayRecord dataset in
`config.data.data_dir` and fails at start, naming this command, when it is
missing. Run this step once, on a machine with internet (or with the files
already downloaded, via --source).

  dataset                  resolution  labels  how (default source; --source alternatives)
  cifar10                  32          10      downloads cifar-10-binary.tar.gz (no TF); --source=the
                                               tarball, or EDM's cifar10-32x32.zip / an image folder
  imagenet_resized/64x64   64          1000    --source=DIR with Imagenet64_train_part{1,2}_npz.zip
                                               (image-net.org "downsampled ImageNet", an account is
                                               needed; no TF), or tfds' own builder (needs TF)
  lsun/cat                 256         -       tfds' builder (needs TF) or --source=image folder;
                                               ADM centre crop (see below)
  celeb_a                  64          -       tfds' builder (needs TF) or --source=img_align_celeba;
                                               centred 140x140 crop, bilinear to 64
  ffhq                     64          -       --source=images1024x1024 folder (or EDM's zip), LANCZOS
                                               to 64x64 as EDM's dataset_tool --resolution=64x64
  synthetic                8 (any)     10      generated blobs, for smoke tests (no source)
  any other name           from data   from dataset.json   --source=EDM-style image folder or zip

Resizing: LSUN Cat uses ADM's `center_crop_arr` (BOX halving, BICUBIC so the
short side is 256, centre crop): ACT's released code has no LSUN data path
(its lsun script calls a data module without an LSUN branch, docs/act.md#pitfalls), and
this is the preprocessing of the CM LSUN-256 baselines ACT compares against.
`--transform` overrides the default (none | center-crop | adm | celeba) and
`--resolution` the size; `--name` stores the result under another name.

Latents (DiT's and SiT's setting): `--encode_with=VAE_FILE` then encodes the prepared
images with a KL autoencoder file the user supplies and writes `NAME_latents`, the
posterior moments times `--scale_factor` (jaxdiff/data/latents.py, docs/latents.md).

Preparing through tfds' own builders needs TensorFlow (`pip install -e
".[prepare]"`); everything else, and all of training, runs without it.
"""
from __future__ import annotations

import os
import sys
import urllib.request
from typing import Callable, Iterable

from jaxdiff.data import builders, images, sources
from jaxdiff.data.catalog import RECIPES, Recipe, resolve_data_dir

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"


def _is_tarball(path: str) -> bool:
  return os.path.isfile(path) and path.endswith((".tar.gz", ".tgz", ".tar"))


def _npz_zips(source: str) -> list[str]:
  """Downsampled-ImageNet npz zips under `source` (a directory or one zip)."""
  if os.path.isdir(source):
    found = [os.path.join(source, n) for n in sources.IMAGENET64_TRAIN_ZIPS
             if os.path.exists(os.path.join(source, n))]
    return found
  if source.endswith("_npz.zip"):
    return [source]
  return []


def _cifar10_binary(name: str, data_dir: str, tar: str | None, download: bool):
  if tar is None:
    tar = os.path.join(data_dir, "downloads", os.path.basename(CIFAR10_URL))
    if not os.path.exists(tar):
      if not download:
        raise FileNotFoundError(f"{tar} is missing and --nodownload was given.")
      os.makedirs(os.path.dirname(tar), exist_ok=True)
      print(f"downloading {CIFAR10_URL} -> {tar}", flush=True)
      urllib.request.urlretrieve(CIFAR10_URL, tar + ".part")
      os.replace(tar + ".part", tar)
  print(f"CIFAR-10 binary archive {tar} (md5 {builders.file_md5(tar)})", flush=True)
  info = builders.ImageDatasetInfo(name, (32, 32, 3), 10, source=f"cifar-10-binary ({tar})",
                                   transform="none", num_examples_hint=50_000)
  return (lambda: sources.cifar10_binary_examples(tar)), info


def _imagenet_npz(name: str, zips: list[str]):
  info = builders.ImageDatasetInfo(name, (64, 64, 3), 1000,
                                   source=f"downsampled ImageNet npz ({', '.join(zips)})",
                                   transform="box (Chrabaszcz et al.)",
                                   num_examples_hint=1_281_167)
  return (lambda: sources.imagenet_npz_examples(zips, 64)), info


def _image_folder(dataset: str, name: str, recipe: Recipe | None, source: str,
                  resolution: int | None, transform: str):
  shape, classes, count = sources.probe_image_folder(source, resolution, transform)
  if recipe and recipe.num_classes and classes and classes != recipe.num_classes:
    raise builders.DatasetFormatError(
        f"{source}/dataset.json has {classes} classes; {dataset} has {recipe.num_classes}.")
  if recipe and recipe.num_classes and not classes:
    print(f"note: {source} has no dataset.json labels; {name} is prepared unlabelled.",
          flush=True)
  print(f"importing {count} images of shape {shape} from {source} "
        f"(transform {transform if resolution else 'none'})", flush=True)
  info = builders.ImageDatasetInfo(name, shape, classes, source=f"image folder/zip ({source})",
                                   transform=f"{transform}@{resolution}" if resolution else "none",
                                   num_examples_hint=count)
  return (lambda: sources.image_folder_examples(source, resolution, transform)), info


def _tfds_builder(dataset: str, name: str, recipe: Recipe | None, resolution: int | None,
                  transform: str, tfds_data_dir: str | None):
  if recipe is None or recipe.tfds_name is None:
    raise ValueError(f"--dataset={dataset} needs --source=PATH (an image folder or zip); "
                     "see `python -m jaxdiff.prepare_data --helpfull`.")
  import importlib.util
  if importlib.util.find_spec("tensorflow") is None:  # fail before tfds creates any directory
    raise ImportError(
        f"Preparing {dataset!r} without --source goes through tfds' own builder, which needs "
        "TensorFlow (training does not): install it for this one step with "
        "`pip install -e \".[prepare]\"`, or pass --source=FOLDER_OR_ZIP with the images.")
  shape = (resolution, resolution, recipe.channels)
  # Upper bounds of the train splits (LSUN cat: 1,657,266 images; CelebA: 162,770).
  hint = {"lsun/cat": 1_700_000, "celeb_a": 200_000}.get(dataset, 1_300_000)
  info = builders.ImageDatasetInfo(name, shape, recipe.num_classes,
                                   source=f"tfds builder {recipe.tfds_name}",
                                   transform=f"{transform}@{resolution}", num_examples_hint=hint)
  return (lambda: sources.tfds_examples(recipe.tfds_name, tfds_data_dir, resolution, transform)
          ), info


def _examples_and_info(dataset: str, name: str, data_dir: str, source: str | None,
                       resolution: int | None, transform: str | None,
                       num_examples: int, tfds_data_dir: str | None, download: bool
                       ) -> tuple[Callable[[], Iterable[builders.Example]], builders.ImageDatasetInfo]:
  recipe = RECIPES.get(dataset)
  if recipe is None and not source:
    raise ValueError(
        f"--dataset={dataset!r} is not one of the built-in recipes {sorted(RECIPES)}; import "
        "it from an EDM-style image folder or zip with --source=PATH.")
  resolution = resolution or (recipe.resolution if recipe else None)
  transform = transform or (recipe.transform if recipe else "none")
  images.get_transform(transform)  # validate early
  if dataset == "synthetic":
    return sources.synthetic_source(name, resolution or 8, recipe.num_classes, num_examples)
  if dataset == "cifar10" and (source is None or _is_tarball(source)):
    return _cifar10_binary(name, data_dir, source, download)
  if dataset == "imagenet_resized/64x64" and source and _npz_zips(source):
    return _imagenet_npz(name, _npz_zips(source))
  if source:
    return _image_folder(dataset, name, recipe, source, resolution, transform)
  return _tfds_builder(dataset, name, recipe, resolution, transform, tfds_data_dir)


def prepare(dataset: str, data_dir: str | None = None, source: str | None = None,
            resolution: int | None = None, transform: str | None = None, name: str | None = None,
            num_examples: int = 256, tfds_data_dir: str | None = None, download: bool = True,
            overwrite: bool = False) -> str:
  """Prepares `dataset` as `name` (default: the dataset name) in data_dir; returns its directory."""
  data_dir = resolve_data_dir(data_dir)
  name = name or dataset
  builders.split_name(name)
  examples, info = _examples_and_info(dataset, name, data_dir, source, resolution, transform,
                                      num_examples, tfds_data_dir, download)
  path = builders.write_dataset(data_dir, info, examples, overwrite=overwrite)
  return path


def main(argv):
  from absl import flags
  del argv
  f = flags.FLAGS
  data_dir = resolve_data_dir(f.data_dir)
  try:
    path = prepare(f.dataset, data_dir, f.source, f.resolution, f.transform, f.name,
                   f.num_examples, f.tfds_data_dir, f.download, f.overwrite)
  except (ValueError, FileNotFoundError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  name = images = f.name or f.dataset
  if f.encode_with:
    name = f.latent_name or f"{images}_latents"
    try:
      path = encode(name, images, data_dir, f.encode_with, f.scale_factor, f.latent_flip,
                    f.overwrite)
    except (ValueError, FileNotFoundError, ImportError) as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(2)
  print(f"\nprepared {name} in {path}\ntrain on it with:\n  --config.data.name=tfds "
        f"--config.data.tfds_name={name} --config.data.data_dir={data_dir}", flush=True)
  if f.encode_with:
    print(f"  --config.data.autoencoder={os.path.abspath(f.encode_with)}", flush=True)


def encode(name: str, source_name: str, data_dir: str, vae_path: str, scale_factor: float,
           flip: bool, overwrite: bool = False) -> str:
  """Encodes the prepared image dataset `source_name` into the latent dataset `name`."""
  from jaxdiff.data import latents, tfds_source
  if not os.path.exists(vae_path):
    raise FileNotFoundError(f"--encode_with={vae_path}: no such file; pass the autoencoder "
                            "weights you downloaded (e.g. diffusion_pytorch_model.safetensors "
                            "of stabilityai/sd-vae-ft-ema).")
  source = tfds_source.TfdsImageDataset(builders.dataset_dir(data_dir, source_name),
                                        with_labels=False)
  return latents.encode_dataset(data_dir, source, source_name, vae_path, name, scale_factor,
                                flip=flip, overwrite=overwrite)


def _define_flags():
  from absl import flags
  flags.DEFINE_string("dataset", None, f"One of {sorted(RECIPES)}, or any name with --source.")
  flags.DEFINE_string("data_dir", None, "Where prepared datasets live (default $JAXDIFF_DATA_DIR "
                      "or ~/jaxdiff_datasets); training reads config.data.data_dir.")
  flags.DEFINE_string("source", None, "Local input: an image folder or zip (EDM layout, optional "
                      "dataset.json labels), cifar-10-binary.tar.gz, or a directory with the "
                      "Imagenet64_train_part*_npz.zip files.")
  flags.DEFINE_integer("resolution", None, "Output resolution (default: the dataset's recipe).")
  flags.DEFINE_enum("transform", None, sorted(images.TRANSFORMS),
                    "Crop/resize (default: the dataset's recipe).")
  flags.DEFINE_string("name", None, "Store under this name instead of --dataset.")
  flags.DEFINE_integer("num_examples", 256, "Images to generate for --dataset=synthetic.")
  flags.DEFINE_string("tfds_data_dir", None, "tfds' own download/build dir (TF path only).")
  flags.DEFINE_bool("download", True, "Allow downloading (CIFAR-10 only; others need --source "
                    "or tfds).")
  flags.DEFINE_bool("overwrite", False, "Rebuild even if the dataset exists.")
  flags.DEFINE_string("encode_with", None, "A KL autoencoder weights file (diffusers "
                      "safetensors/.bin or CompVis state dict, never downloaded): after preparing "
                      "the images, also write their latents (docs/latents.md).")
  flags.DEFINE_string("latent_name", None, "Name of the latent dataset (default NAME_latents).")
  flags.DEFINE_float("scale_factor", 0.18215, "Latent scale (Stable Diffusion's, as DiT uses).")
  flags.DEFINE_bool("latent_flip", True, "Also store each image's mirror's moments, so "
                    "data.random_flip flips before encoding, as DiT does.")
  flags.mark_flag_as_required("dataset")


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
