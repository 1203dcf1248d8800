"""Weights files: PyTorch state dicts read without running code, and jaxdiff's `.npz`.

One reader for every network whose weights come from a file the user supplies
(the FID Inception, LPIPS' VGG16, and the official checkpoints to come). Two
formats are read:

* PyTorch `.pth` state dicts, in the zip layout of torch >= 1.6 and the legacy
  layout. A pickle can name any Python callable and runs it on load, so the
  reader resolves only `OrderedDict`, the tensor-rebuild functions and storage
  types; anything else raises `WeightsFileError` naming the global it refused,
  and nothing from the file runs (the policy of `torch.load(weights_only=True)`).
  When PyTorch is installed, `load_state_dict` uses `torch.load(weights_only=True)`.
* `.npz` files of named numpy arrays (read with `allow_pickle=False`), which
  carry a `__format__` tag naming what they hold.

`check_state_dict` maps a state dict onto a Flax parameter tree and reports all
missing keys and wrong shapes at once, so a user sees what is wrong with a file
rather than the first difference.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from typing import Any, Callable, Mapping

import jax
import numpy as np

from jaxdiff.errors import MissingWeightsFileError, WeightsFileError

FORMAT_KEY = "__format__"


# ------------------------------------------------------------------ Flax parameter names

def flat_shapes(init_fn: Callable, *example_inputs) -> dict[str, tuple[int, ...]]:
  """'module.sub.leaf' -> shape of the params `init_fn(key, *inputs)` makes (no compute)."""
  tree = jax.eval_shape(init_fn, jax.random.PRNGKey(0), *example_inputs)["params"]
  return {name: tuple(leaf.shape) for name, leaf in flatten(tree).items()}


def flatten(params) -> dict[str, Any]:
  """A nested parameter dict as 'a.b.c' -> leaf."""
  return {".".join(str(p.key) for p in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def unflatten(flat: Mapping[str, Any]) -> dict:
  """'a.b.c' -> leaf back to a nested dict."""
  tree: dict = {}
  for name, value in flat.items():
    node = tree
    *parents, leaf = name.split(".")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


class WrongValue(Exception):
  """Raised by a `to_flax` converter for a value it cannot use (the message says why)."""


def check_state_dict(state_dict: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]],
                     torch_name: Callable[[str], str],
                     to_flax: Callable[[str, np.ndarray], np.ndarray]) -> tuple[dict, list[str]]:
  """(Flax params, problems) of a state dict: every key checked, every problem listed.

  `to_flax(flax_name, value)` turns the file's value into the Flax leaf (layout
  and dtype) or raises `WrongValue("key: what is wrong")`; a leaf of another
  shape than `shapes` counts as a wrong shape.
  """
  flat, missing, wrong = {}, [], []
  for name, shape in shapes.items():
    key = torch_name(name)
    if key not in state_dict:
      missing.append(key)
      continue
    try:
      value = to_flax(name, np.asarray(state_dict[key]))
    except WrongValue as e:
      wrong.append(str(e))
      continue
    if tuple(value.shape) != tuple(shape):
      wrong.append(f"{key}: shape {tuple(value.shape)} in Flax layout, expected {tuple(shape)}")
      continue
    flat[name] = value
  problems = []
  if missing:
    problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
  if wrong:
    problems.append(f"{len(wrong)} wrong shapes (e.g. {'; '.join(wrong[:3])})")
  return unflatten(flat), problems


def oihw_to_hwio(value: np.ndarray) -> np.ndarray:
  """A PyTorch conv kernel [out, in, h, w] in Flax's layout [h, w, in, out]."""
  return value.transpose(2, 3, 1, 0)


def hwio_to_oihw(value: np.ndarray) -> np.ndarray:
  return value.transpose(3, 2, 0, 1)


# ------------------------------------------------------------------ .npz

def save_npz(path: str, state_dict: Mapping[str, np.ndarray], npz_format: str) -> None:
  """Writes the arrays and the format tag atomically (a killed write leaves no half file)."""
  arrays = {k: np.asarray(v) for k, v in state_dict.items()}
  arrays[FORMAT_KEY] = np.asarray(npz_format)
  tmp = path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def _read_npz(path: str, npz_format: str | None, expected: str) -> dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as data:
    out = {k: data[k] for k in data.files}
  tag = out.pop(FORMAT_KEY, None)
  if npz_format is not None and tag is not None and str(tag) != npz_format:
    raise WeightsFileError(f"{path} is a {str(tag)!r} file, not {npz_format!r}. Expected "
                           f"{expected}.")
  return out


# ------------------------------------------------------------------ the entry point

def load_state_dict(path: str, *, what: str, expected: str, npz_format: str | None = None,
                    allow_pth: bool = True) -> dict[str, np.ndarray]:
  """A state dict from a `.npz` (or a PyTorch `.pth` when `allow_pth`), never running code.

  Every failure is a `WeightsFileError` that names `what` was being read and the
  `expected` format (including how to make the file).
  """
  if not os.path.exists(path):
    raise MissingWeightsFileError(f"{what} not found: {path}. jaxdiff never downloads weights; "
                                  f"expected {expected}.")
  if not allow_pth and not path.endswith(".npz"):
    raise WeightsFileError(f"{path} is not a .npz; {what} are loaded from a .npz only. "
                           f"Expected {expected}.")
  try:
    if path.endswith(".npz"):
      out = _read_npz(path, npz_format, expected)
    else:
      out = _read_pth(path)
  except WeightsFileError:
    raise
  except Exception as e:  # noqa: BLE001 - any read failure means "not this format"
    raise WeightsFileError(
        f"{path} could not be read ({type(e).__name__}: {str(e)[:200]}); it may be truncated "
        f"or of another format. Expected {expected}.") from e
  if not isinstance(out, Mapping) or not out:
    raise WeightsFileError(f"{path} holds no state dict. Expected {expected}.")
  return {k: np.asarray(v) for k, v in out.items() if isinstance(v, np.ndarray)}


def _read_pth(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    return read_torch_state_dict(path)
  # weights_only=True: tensors and containers only; refuses any other pickled object.
  sd = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(sd, Mapping):
    raise WeightsFileError(f"{path} holds a {type(sd).__name__}, not a state dict.")
  return {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.cpu().numpy()
          for k, v in sd.items()}


# ------------------------------------------------------------------ torch-free .pth reader

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageType:
  def __init__(self, name: str):
    if name not in _STORAGE_DTYPES:
      raise WeightsFileError(f"unsupported tensor storage torch.{name}")
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
  """A flat buffer filled from the file (possibly after unpickling, for the legacy format)."""

  def __init__(self, dtype: np.dtype, numel: int):
    self.dtype, self.numel, self.data = dtype, int(numel), None


class _LazyTensor:
  def __init__(self, storage: _Storage, offset: int, size, stride):
    self.storage, self.offset = storage, int(offset)
    self.size, self.stride = tuple(size), tuple(stride)

  def materialise(self) -> np.ndarray:
    data = self.storage.data
    if data is None:
      raise WeightsFileError("a tensor's storage was never read (truncated file?)")
    if all(self.size):
      last = self.offset + sum((n - 1) * st for n, st in zip(self.size, self.stride))
      if last >= len(data):
        raise WeightsFileError("a tensor reaches past its storage (truncated file?)")
    item = data.dtype.itemsize
    return np.lib.stride_tricks.as_strided(
        data[self.offset:], shape=self.size, strides=[s * item for s in self.stride]).copy()


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only the few globals a state dict needs; anything else is refused, not run."""

  _ALLOWED: dict[tuple[str, str], Callable] = {
      ("collections", "OrderedDict"): collections.OrderedDict,
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  }

  def __init__(self, file, load_storage: Callable):
    super().__init__(file)
    self._load_storage = load_storage

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return self._ALLOWED[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise WeightsFileError(f"refusing to load the global {module}.{name} from a weights "
                           "file (only tensors and dicts are allowed)")

  def persistent_load(self, pid):
    return self._load_storage(pid)


def _materialise(obj):
  if isinstance(obj, _LazyTensor):
    return obj.materialise()
  if isinstance(obj, Mapping):
    return {k: _materialise(v) for k, v in obj.items()}
  return obj


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """A PyTorch state dict (zip format of torch >= 1.6, or the legacy format) without torch."""
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as zf:
      return _read_zip(path, zf)
  with open(path, "rb") as f:
    return _read_legacy(path, f)


def _read_zip(path: str, zf: zipfile.ZipFile) -> dict[str, np.ndarray]:
  pkl = [n for n in zf.namelist() if n.endswith("data.pkl")]
  if len(pkl) != 1:
    raise WeightsFileError(f"{path} is a zip without one data.pkl")
  prefix = pkl[0][:-len("data.pkl")]
  byteorder = "little"
  if prefix + "byteorder" in zf.namelist():
    byteorder = zf.read(prefix + "byteorder").decode().strip()
  storages: dict[str, _Storage] = {}

  def load_storage(pid):
    kind, storage_type, key, _location, numel = pid[:5]
    if kind != "storage" or not isinstance(storage_type, _StorageType):
      raise WeightsFileError(f"unexpected persistent id {pid!r}")
    if key not in storages:
      dtype = storage_type.dtype.newbyteorder("<" if byteorder == "little" else ">")
      raw = zf.read(f"{prefix}data/{key}")
      if len(raw) != int(numel) * dtype.itemsize:
        raise WeightsFileError(f"storage {key} holds {len(raw)} bytes, expected "
                               f"{int(numel) * dtype.itemsize} (truncated file?)")
      storage = _Storage(dtype, numel)
      storage.data = np.frombuffer(raw, dtype).astype(dtype.newbyteorder("="))
      storages[key] = storage
    return storages[key]

  obj = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), load_storage).load()
  return _materialise(obj)


def _read_legacy(path: str, f) -> dict[str, np.ndarray]:
  storages: dict[str, _Storage] = {}

  def load_legacy(pid):
    kind, storage_type, key, _location, numel = pid[:5]
    view = pid[5] if len(pid) > 5 else None
    if kind != "storage" or not isinstance(storage_type, _StorageType) or view is not None:
      raise WeightsFileError(f"unsupported persistent id {pid!r}")
    if key not in storages:
      storages[key] = _Storage(storage_type.dtype, numel)
    return storages[key]

  def plain_load():
    return _RestrictedUnpickler(f, load_legacy).load()

  if plain_load() != _LEGACY_MAGIC:
    raise WeightsFileError(f"{path} is neither a zip nor a legacy PyTorch file")
  plain_load()  # protocol version
  plain_load()  # sys info
  obj = plain_load()
  for key in plain_load():
    storage = storages[key]
    count = np.frombuffer(f.read(8), "<i8")
    if count.size != 1 or int(count[0]) != storage.numel:
      raise WeightsFileError(f"storage {key}: bad element count (truncated file?)")
    nbytes = storage.numel * storage.dtype.itemsize
    raw = f.read(nbytes)
    if len(raw) != nbytes:
      raise WeightsFileError(f"storage {key} is cut short (truncated file?)")
    storage.data = np.frombuffer(raw, storage.dtype.newbyteorder("<")).astype(storage.dtype)
  return _materialise(obj)
