"""A restricted reader of NVlabs/edm network pickles: records and tensors, never code.

An EDM snapshot is `pickle.dump(dict(ema=net, loss_fn=..., augment_pipe=...,
dataset_kwargs=...))`. Its networks are `torch_utils.persistence` classes, which pickle
as a call `_reconstruct_persistent_obj(meta)`: `meta` carries the Python source of the
class's module (`module_src`), which EDM's own loader `exec`s, the class name and the
object's `__dict__` (`state`). Plain `pickle.load` would therefore run that source, and
any other global the file names. This reader resolves only:

  * containers and scalars: `collections.OrderedDict`, `builtins.set`/`frozenset`,
    `dnnlib.util.EasyDict` (read as a dict), numpy scalars of numeric dtypes, and
    `_codecs.encode(text, "latin1")` (how protocol-2 pickles store bytes);
  * tensors: `torch._utils._rebuild_tensor_v2` / `_rebuild_parameter[_with_state]` over a
    storage that `torch.storage._load_from_bytes` carries as bytes (a legacy `torch.save`
    of the storage, or its zip layout). Those bytes are parsed by the torch-free
    restricted reader of `jaxdiff.weights`, never by `torch.load`;
  * `torch_utils.persistence._reconstruct_persistent_obj`, turned into a `ModuleRecord`
    whose `module_src` stays a string (never compiled or run);
  * torch's container modules (`ModuleDict`, `ModuleList`, `Sequential`), as records.

Any other global raises `WeightsFileError` naming it, before anything is called.
docs/convert.md#safety describes the policy.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from typing import Any

import numpy as np

from jaxdiff import weights
from jaxdiff.errors import MissingWeightsFileError, WeightsFileError

EXPECTED = ("an NVlabs/edm or NVlabs/edm2 network pickle (network-snapshot-*.pkl, "
            "edm2-img64-*.pkl)")
_TORCH_CONTAINERS = ("ModuleDict", "ModuleList", "Sequential")


class ModuleRecord:
  """A pickled torch module, as data: its class name, its `__dict__`, and (for EDM's
  persistent classes) the module source it came with, kept as text and never run."""

  def __init__(self, class_name: str, state: dict, module_src: str | None = None,
               source: str = "torch_utils.persistence"):
    self.class_name, self.state, self.module_src, self.source = (
        class_name, state, module_src, source)

  def __setstate__(self, state):  # BUILD of a torch container module (NEWOBJ + state)
    if not isinstance(state, dict):
      raise WeightsFileError(f"torch.nn.{self.class_name}: its state is a "
                             f"{type(state).__name__}, not a dict")
    self.state = state

  def __repr__(self):
    return f"ModuleRecord({self.class_name}, {len(self.modules)} submodules)"

  @property
  def modules(self) -> dict:
    return dict(self.state.get("_modules") or {})

  @property
  def init_kwargs(self) -> dict | None:
    """The constructor's keyword arguments (EDM's persistence records them), or None."""
    kwargs = self.state.get("_init_kwargs")
    return dict(kwargs) if isinstance(kwargs, dict) else None

  def get(self, key: str, default=None):
    return self.state.get(key, default)

  def tensors(self, prefix: str = "") -> dict[str, np.ndarray]:
    """Every parameter and buffer below this module, by its torch state-dict key."""
    out = {}
    for group in ("_parameters", "_buffers"):
      for name, value in (self.state.get(group) or {}).items():
        if value is not None:
          if not isinstance(value, np.ndarray):
            raise WeightsFileError(f"{prefix}{name} is a {type(value).__name__}, not a tensor")
          out[prefix + name] = value
    for name, sub in self.modules.items():
      if sub is None:
        continue
      if not isinstance(sub, ModuleRecord):
        raise WeightsFileError(f"submodule {prefix}{name} is a {type(sub).__name__}, not a module")
      out.update(sub.tensors(f"{prefix}{name}."))
    return out


def _container_record(name: str) -> type:
  """A stand-in for torch.nn.<name>: rebuilt by NEWOBJ, filled by BUILD, never torch."""

  class Container(ModuleRecord):
    def __new__(cls, *args, **kwargs):
      del args, kwargs
      obj = object.__new__(cls)
      ModuleRecord.__init__(obj, name, {}, None, f"torch.nn.{name}")
      return obj

    def __init__(self, *args, **kwargs):  # state arrives through __setstate__
      del args, kwargs

  Container.__name__ = Container.__qualname__ = f"{name}Record"
  return Container


class _EasyDict(dict):
  """dnnlib.util.EasyDict read as a plain dict (its attribute access is not needed)."""


def _persistent_record(meta) -> ModuleRecord:
  if not isinstance(meta, dict):
    raise WeightsFileError(f"a persistent object's meta is a {type(meta).__name__}, not a dict")
  class_name, module_src, state = meta.get("class_name"), meta.get("module_src"), meta.get("state")
  if meta.get("type", "class") != "class" or not isinstance(class_name, str):
    raise WeightsFileError(f"unsupported persistent object (type {meta.get('type')!r})")
  if not isinstance(module_src, str) or not isinstance(state, dict):
    raise WeightsFileError(f"persistent object {class_name}: module_src or state missing")
  return ModuleRecord(class_name, state, module_src)


def _storage_from_bytes(data) -> weights._Storage:
  """torch.storage._load_from_bytes, without torch.load: the bytes hold a `torch.save` of
  one storage, read by jaxdiff.weights' restricted reader (legacy or zip layout)."""
  if not isinstance(data, (bytes, bytearray)):
    raise WeightsFileError(f"a tensor storage is a {type(data).__name__}, not bytes")
  what = "a tensor's embedded storage bytes"
  try:
    if zipfile.is_zipfile(io.BytesIO(data)):
      with zipfile.ZipFile(io.BytesIO(data)) as zf:
        storage = weights._read_zip(what, zf)
    else:
      storage = weights._read_legacy(what, io.BytesIO(bytes(data)))
  except WeightsFileError as e:
    raise WeightsFileError(f"{what}: {e}") from None
  except Exception as e:  # noqa: BLE001 - any failure means a damaged storage
    raise WeightsFileError(f"{what} could not be read ({type(e).__name__}: {str(e)[:200]})") from e
  if not isinstance(storage, weights._Storage) or storage.data is None:
    raise WeightsFileError(f"{what} hold a {type(storage).__name__}, not one tensor storage")
  return storage


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
  del requires_grad, backward_hooks, state
  return data


class _DType:
  """numpy.dtype(spec, align, copy) of a numeric spec; BUILD's state sets only the byte
  order (numpy's own __setstate__ never sees the file's data)."""

  def __init__(self, spec, align=False, copy=False):
    del align, copy
    dtype = np.dtype(spec) if isinstance(spec, str) else None
    if dtype is None or dtype.kind not in "biufc":
      raise WeightsFileError(f"refusing numpy.dtype({spec!r}): only numeric dtypes are read")
    self.dtype = dtype

  def __setstate__(self, state):
    order = state[1] if isinstance(state, tuple) and len(state) > 1 else "="
    if order not in ("<", ">", "=", "|"):
      raise WeightsFileError(f"numpy dtype with byte order {order!r}")
    self.dtype = self.dtype.newbyteorder(order if order != "|" else "=")


def _numpy_scalar(dtype, data=None):
  if not isinstance(dtype, _DType) or not isinstance(data, bytes):
    raise WeightsFileError("refusing a numpy scalar that is not a plain number")
  return np.frombuffer(data, dtype.dtype)[0].item()


def _latin1(text, encoding="latin1"):
  """_codecs.encode, as protocol-2 pickles store bytes; latin-1 text only."""
  if not isinstance(text, str) or encoding != "latin1":
    raise WeightsFileError(f"refusing _codecs.encode(..., {encoding!r})")
  return text.encode("latin1")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,          # protocol 2 names builtins the Python 2 way
    ("__builtin__", "frozenset"): frozenset,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("numpy", "dtype"): _DType,
    ("_codecs", "encode"): _latin1,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("torch._utils", "_rebuild_tensor_v2"): weights._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): weights._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
    **{("torch.nn.modules.container", n): _container_record(n) for n in _TORCH_CONTAINERS},
}


class _NetworkUnpickler(pickle.Unpickler):
  """Resolves only `_ALLOWED`; any other global is refused (named), nothing of it runs."""

  def find_class(self, module, name):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    raise WeightsFileError(
        f"refusing to load the global {module}.{name}: {EXPECTED} holds only tensors, "
        "containers and EDM's persistent classes (whose source is kept as text, never run)")

  def persistent_load(self, pid):
    raise WeightsFileError(f"unexpected persistent id {str(pid)[:100]!r} (a torch.save file, "
                           "not a pickle.dump of EDM's training loop?)")


def _materialise(obj, memo: dict):
  """The object graph with every lazy tensor read into a numpy array (shared stays shared)."""
  key = id(obj)
  if key in memo:
    return memo[key]
  if isinstance(obj, weights._LazyTensor):
    out = obj.materialise()
  elif isinstance(obj, ModuleRecord):
    memo[key] = obj
    obj.state = _materialise(obj.state, memo)
    return obj
  elif isinstance(obj, dict):
    out = memo[key] = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
    for k, v in obj.items():
      out[k] = _materialise(v, memo)
    return out
  elif isinstance(obj, (list, tuple, set, frozenset)):
    out = type(obj)(_materialise(v, memo) for v in obj)
  else:
    return obj
  memo[key] = out
  return out


def _check_file(path: str) -> None:
  if not os.path.exists(path):
    raise MissingWeightsFileError(f"{path} not found; expected {EXPECTED}. jaxdiff never "
                                  "downloads weights (docs/convert.md#where-the-pickles-come-from).")
  with open(path, "rb") as f:
    head = f.read(4)
  if head[:2] == b"PK":
    raise WeightsFileError(
        f"{path} is a zip (a torch.save file such as training-state-*.pt?), not a pickle. "
        f"Expected {EXPECTED}.")
  if len(head) < 2 or head[0] != 0x80 or head[1] < 2:
    raise WeightsFileError(f"{path} is not a pickle (it starts with {head!r}). Expected "
                           f"{EXPECTED}.")


def read_pickle(path: str) -> dict:
  """The snapshot dict of an EDM network pickle, networks as `ModuleRecord`s, tensors as
  numpy arrays. Raises `WeightsFileError` (naming `EXPECTED`) for anything else."""
  _check_file(path)
  try:
    with open(path, "rb") as f:
      obj = _NetworkUnpickler(f).load()
      trailing = f.read(1)
    obj = _materialise(obj, {})
  except WeightsFileError as e:
    raise WeightsFileError(f"{path}: {e}. Expected {EXPECTED}.") from None
  except Exception as e:  # noqa: BLE001 - any failure to parse means "not this format"
    raise WeightsFileError(
        f"{path} could not be read ({type(e).__name__}: {str(e)[:200]}); it may be truncated "
        f"or of another format. Expected {EXPECTED}.") from e
  if trailing:
    raise WeightsFileError(f"{path} has data after the pickle's end; expected {EXPECTED}.")
  if not isinstance(obj, dict) or not isinstance(obj.get("ema"), ModuleRecord):
    keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
    raise WeightsFileError(f"{path} holds no 'ema' network ({keys}); expected {EXPECTED}.")
  return obj
