"""The datasets `jaxdiff.prepare_data` can prepare, and where prepared datasets live.

Shared by the preparation command and the reader (`tfds_source`), so an error
about a missing dataset can quote the exact command that prepares it.
"""
from __future__ import annotations

import dataclasses
import os

DATA_DIR_ENV = "JAXDIFF_DATA_DIR"


def resolve_data_dir(data_dir: str | None) -> str:
  """config.data.data_dir, else $JAXDIFF_DATA_DIR, else ~/jaxdiff_datasets (absolute)."""
  data_dir = data_dir or os.environ.get(DATA_DIR_ENV) or os.path.join("~", "jaxdiff_datasets")
  return os.path.abspath(os.path.expanduser(data_dir))


@dataclasses.dataclass(frozen=True)
class Recipe:
  resolution: int | None     # None: the images' own size
  num_classes: int | None    # None: from the source (dataset.json)
  transform: str
  channels: int = 3
  tfds_name: str | None = None  # tfds' own builder, used when no --source is given


RECIPES: dict[str, Recipe] = {
    "cifar10": Recipe(32, 10, "none", tfds_name=None),
    "imagenet_resized/64x64": Recipe(64, 1000, "none", tfds_name="imagenet_resized/64x64"),
    "lsun/cat": Recipe(256, 0, "adm", tfds_name="lsun/cat"),
    "celeb_a": Recipe(64, 0, "celeba", tfds_name="celeb_a"),
    "ffhq": Recipe(64, 0, "none"),
    "synthetic": Recipe(8, 10, "none"),
}


def prepare_command(dataset: str, data_dir: str) -> str:
  """The exact command that prepares `dataset` into `data_dir` (quoted in error messages)."""
  cmd = f"python -m jaxdiff.prepare_data --dataset={dataset} --data_dir={data_dir}"
  if dataset not in RECIPES or dataset == "ffhq":
    cmd += " --source=PATH_TO_IMAGE_FOLDER_OR_ZIP"
  return cmd
