"""EDM's networks as jaxdiff networks: the preconditioner and the architecture registry.

`load_network(path)` reads a pickle (`pickle_reader`), recognises its preconditioner
(`EDMPrecond`, `VPPrecond`, `VEPrecond`; read from the object's attributes) and maps the
wrapped network through the converter registered for its class name
(`register_architecture`; `song_unet` registers SongUNet, `dhariwal_unet` DhariwalUNet,
`edm2` EDM2's Precond, which is its own network: UNet and log-variance head). Classes EDM
pickles hold that no converter handles yet (iDDPM) fail with "not supported yet"
(docs/convert.md#not-supported).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
from typing import Callable

import flax.linen as nn
import jax
import numpy as np

from jaxdiff import weights
from jaxdiff.convert.pickle_reader import EXPECTED, ModuleRecord, read_pickle
from jaxdiff.diffusion import precond as precond_lib
from jaxdiff.errors import WeightsFileError
from jaxdiff.train import step as step_lib

# EDM2's Precond preconditions as EDMPrecond does (c_noise = ln(sigma) / 4).
PRECONDS = {"EDMPrecond": "edm", "VPPrecond": "vp", "VEPrecond": "ve", "Precond": "edm"}
# Preconditioners whose record is the whole network (EDM2: UNet + log-variance head).
SELF_CONTAINED = ("Precond",)
# EDM2's pixel-space encoder (img64); any other `encoder` in a snapshot is a latent model.
PIXEL_ENCODERS = ("StandardRGBEncoder",)
# Classes EDM pickles hold that no converter handles yet: name -> (what, module).
NOT_YET = {
    "iDDPMPrecond": ("iDDPM preconditioning (iDDPMPrecond)", None),
}


@dataclasses.dataclass
class Precond:
  """An EDM preconditioner: D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)."""
  class_name: str
  formulation: str                       # 'edm' | 'vp' | 've' (objective.formulation)
  img_resolution: int
  img_channels: int
  label_dim: int
  use_fp16: bool
  sigma_data: float = 0.5
  sigma_min: float = 0.0
  sigma_max: float = math.inf
  vp: dict = dataclasses.field(default_factory=dict)   # beta_d, beta_min, M, epsilon_t

  def coefficients(self, sigma):
    if self.formulation == "edm":
      return precond_lib.edm_precond(sigma, self.sigma_data)
    if self.formulation == "vp":
      return precond_lib.vp_precond(sigma, self.vp["beta_d"], self.vp["beta_min"], self.vp["M"])
    return precond_lib.ve_precond(sigma)


@dataclasses.dataclass
class Converted:
  """What an architecture converter returns."""
  module: nn.Module                      # equals the official network's forward
  params: dict                           # nested numpy float32, the pickle's EMA weights
  model_config: dict | None              # jaxdiff config.model keys; None: no model.name fits
  workdir_problems: list[str]            # why a jaxdiff workdir would not reproduce it


@dataclasses.dataclass
class Network:
  source: str
  precond: Precond
  model_class: str
  converted: Converted
  snapshot_keys: tuple[str, ...]
  dataset_kwargs: dict | None = None     # the snapshot's dataset_kwargs (EDM's training data)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    p = self.precond
    return (p.img_resolution, p.img_resolution, p.img_channels)

  def num_params(self) -> int:
    return int(sum(np.size(v) for v in jax.tree.leaves(self.converted.params)))


_ARCHITECTURES: dict[str, Callable[[ModuleRecord, Precond, str], Converted]] = {}


def register_architecture(class_name: str, converter: Callable) -> None:
  """Registers `converter(record, precond, where) -> Converted` for a network class name."""
  _ARCHITECTURES[class_name] = converter


def _not_supported(class_name: str, where: str) -> WeightsFileError:
  what, module = NOT_YET[class_name]
  status = ""
  if module:
    exists = importlib.util.find_spec(module) is not None
    status = (f" ({module} exists, but no converter is registered for {class_name}: "
              "jaxdiff.convert.register_architecture)" if exists else
              f" (jaxdiff has no such network yet: {module})")
  return WeightsFileError(f"{where}: {what} is not supported yet{status}; SongUNet "
                          "(DDPM++ / NCSN++), DhariwalUNet (ADM) and EDM2 networks convert "
                          "today (docs/convert.md#not-supported).")


def _attr(record: ModuleRecord, key: str, where: str):
  if key not in record.state:
    raise WeightsFileError(f"{where}: {record.class_name} has no attribute {key!r}; expected "
                           f"{EXPECTED}.")
  return record.state[key]


def read_precond(ema: ModuleRecord, where: str) -> Precond:
  """The preconditioner of the snapshot's `ema` network (its attributes, not its source)."""
  name = ema.class_name
  if name in NOT_YET:
    raise _not_supported(name, where)
  if name not in PRECONDS:
    raise WeightsFileError(f"{where}: the 'ema' network is a {name}, not one of EDM's "
                           f"preconditioners {tuple(PRECONDS)}; expected {EXPECTED}.")
  get = lambda k: _attr(ema, k, where)
  p = Precond(name, PRECONDS[name], int(get("img_resolution")), int(get("img_channels")),
              int(get("label_dim")), bool(get("use_fp16")))
  if name in ("EDMPrecond", "Precond"):
    p.sigma_data = float(get("sigma_data"))
  if name in ("EDMPrecond", "VEPrecond"):
    p.sigma_min, p.sigma_max = float(get("sigma_min")), float(get("sigma_max"))
  if name == "VPPrecond":
    p.vp = {k: float(get(k)) for k in ("beta_d", "beta_min", "epsilon_t")}
    p.vp["M"] = int(get("M"))
    p.sigma_min = float(get("sigma_min"))
    p.sigma_max = float(get("sigma_max"))
  return p



def param_shapes(module: nn.Module, image_shape, label_dim: int,
                 augment_dim: int = 0) -> dict[str, tuple]:
  """'a.b.leaf' -> shape of the parameters `module` has (traced, nothing computed): what a
  converter checks the pickle's tensors against."""
  tree = jax.eval_shape(lambda: step_lib.init_params(
      module, jax.random.PRNGKey(0), tuple(image_shape), int(label_dim), int(augment_dim)))
  return {k: tuple(v.shape) for k, v in weights.flatten(tree).items()}


def recorded_kwargs(record: ModuleRecord, precond: Precond, where: str, name: str,
                    defaults: dict) -> dict:
  """A network's constructor arguments: the recorded ones over EDM's `defaults`, checked
  for arguments EDM's class does not have and against the preconditioner."""
  recorded = record.init_kwargs
  if recorded is None:
    raise WeightsFileError(f"{where}: the {name} does not record its constructor arguments "
                           "(persistence's _init_kwargs); its configuration cannot be read.")
  unknown = sorted(set(recorded) - set(defaults) - {"img_resolution", "in_channels",
                                                    "out_channels"})
  if unknown:
    raise WeightsFileError(f"{where}: {name} arguments {unknown} are not EDM's (a modified "
                           f"network?); jaxdiff's {name} cannot represent them.")
  kw = {**defaults, **recorded}
  expect = dict(img_resolution=precond.img_resolution, in_channels=precond.img_channels,
                out_channels=precond.img_channels, label_dim=precond.label_dim)
  wrong = [f"{k}={kw.get(k)!r} (preconditioner: {v!r})" for k, v in expect.items()
           if kw.get(k, v) != v]
  if wrong:
    raise WeightsFileError(f"{where}: the {name} disagrees with its preconditioner: "
                           + ", ".join(wrong))
  return kw


def check_encoder(snapshot: dict, where: str) -> None:
  """EDM2's pickles name their data space with an `encoder`; only pixel models convert."""
  encoder = snapshot.get("encoder")
  name = getattr(encoder, "class_name", None)
  if encoder is not None and name not in PIXEL_ENCODERS:
    raise WeightsFileError(f"{where}: an EDM2 latent-space model (encoder {name!r}); jaxdiff "
                           "converts pixel-space EDM2 models (img64) only: it has no VAE yet.")


def load_network(path: str) -> Network:
  """The EMA network of an EDM pickle as a jaxdiff network (checked, never executed)."""
  snapshot = read_pickle(path)
  ema = snapshot["ema"]
  precond = read_precond(ema, path)
  model = ema if ema.class_name in SELF_CONTAINED else ema.modules.get("model")
  check_encoder(snapshot, path)
  if not isinstance(model, ModuleRecord):
    raise WeightsFileError(f"{path}: {ema.class_name} wraps no 'model' network; expected "
                           f"{EXPECTED}.")
  if model.class_name not in _ARCHITECTURES and model.class_name in NOT_YET:
    raise _not_supported(model.class_name, path)
  if model.class_name not in _ARCHITECTURES:
    raise WeightsFileError(f"{path}: no converter for the network class {model.class_name!r} "
                           f"(known: {sorted(_ARCHITECTURES)}; not yet: {sorted(NOT_YET)}).")
  converted = _ARCHITECTURES[model.class_name](model, precond, path)
  data = snapshot.get("dataset_kwargs")
  return Network(path, precond, model.class_name, converted, tuple(map(str, snapshot)),
                 dict(data) if isinstance(data, dict) else None)
