"""Device mesh, shardings and multi-host start-up.

The mesh has two axes: `data` (pure data parallelism) and `fsdp` (data
parallelism that also shards parameters and optimizer state). The batch is
split over both; a parameter is split over `fsdp` along its largest dimension
that divides evenly (the big_vision "fsdp" rule), and replicated otherwise.

Multi-slice (several TPU slices, or GPU hosts joined by a slower network): each
axis size is a product of an ICI part (within a slice: `mesh.data`, `mesh.fsdp`)
and a DCN part (across slices: `mesh.dcn_data`, `mesh.dcn_fsdp`), laid out by
`jax.experimental.mesh_utils.create_hybrid_device_mesh`. With the DCN sizes at
1 (the default) the mesh is the single-slice one.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


# Environment variables that a launcher sets instead of flags (launch/local.sh does).
ENV_COORDINATOR = "JAXDIFF_COORDINATOR"
ENV_NUM_PROCESSES = "JAXDIFF_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXDIFF_PROCESS_ID"
ENV_LOCAL_DEVICES = "JAXDIFF_LOCAL_DEVICES"
ENV_DISTRIBUTED = "JAXDIFF_DISTRIBUTED"  # auto (default) | on | off


def detect_cluster(environ=None) -> str | None:
  """Names the multi-process cluster JAX can configure itself in, or None.

  Only environments with more than one process count: a single SLURM task or a
  single-host TPU VM runs fine without the distributed runtime. The checks mirror
  what `jax.distributed.initialize()` auto-detects (jax/_src/clusters), without
  querying a metadata server or starting a backend.
  """
  env = os.environ if environ is None else environ

  def count(name):
    try:
      return int(env.get(name, "1"))
    except ValueError:
      return 1

  slurm_vars = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                "SLURM_LOCALID")
  if all(v in env for v in slurm_vars) and count("SLURM_NTASKS") > 1:
    return "slurm"  # inside `srun` with several tasks
  if "OMPI_MCA_orte_hnp_uri" in env and count("OMPI_COMM_WORLD_SIZE") > 1:
    return "ompi"
  if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "tpu-multislice"
  hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
  if "," in hosts:
    return "tpu-pod"
  return None


def _on_cloud_tpu_vm() -> bool:
  """True on a TPU VM (TPU chips on the PCI bus), without initialising a backend.

  A TPU pod's workers learn their peers from the metadata server, so their
  environment need not name them; `jax.distributed.initialize()` is harmless on
  a single-host TPU VM, so any TPU VM initialises it.
  """
  try:
    from jax._src import hardware_utils  # private: guard every use
    return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
  except Exception:  # noqa: BLE001 - no detection means "not a TPU VM"
    return False


def maybe_initialize_distributed(coordinator: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None,
                                 local_device_count: int | None = None,
                                 mode: str | None = None,
                                 heartbeat_timeout: int | None = None) -> bool:
  """Starts JAX's distributed runtime once, when this is a multi-process job.

  Returns whether it is running. Order of precedence:
    1. An explicit coordinator (arguments, or JAXDIFF_COORDINATOR /
       JAXDIFF_NUM_PROCESSES / JAXDIFF_PROCESS_ID): any cluster, and
       `launch/local.sh` (JAXDIFF_LOCAL_DEVICES splits a CPU host into devices).
    2. mode "auto" (default; JAXDIFF_DISTRIBUTED): SLURM with several tasks, Open
       MPI, multi-host TPU (see `detect_cluster`) or any TPU VM: JAX configures
       itself from the environment.
    3. Otherwise one process: nothing to start.
  Must run before anything touches a JAX backend (jax.devices(), arrays).
  `heartbeat_timeout` is jax.distributed's (seconds; None: JAX's default).
  """
  mode = (mode or os.environ.get(ENV_DISTRIBUTED, "auto")).lower()
  if mode not in ("auto", "on", "off"):
    raise ValueError(f"{ENV_DISTRIBUTED}={mode!r}: use auto, on or off.")
  if jax.distributed.is_initialized():
    return True
  coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
  num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
  process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  if local_device_count is None:
    local_device_count = _env_int(ENV_LOCAL_DEVICES)
  if local_device_count:
    # CPU-only multi-process (tests, laptops): split the host into devices.
    # This config wins over XLA_FLAGS' --xla_force_host_platform_device_count.
    jax.config.update("jax_num_cpu_devices", int(local_device_count))
  if mode == "off":
    return False
  timeout = {"heartbeat_timeout_seconds": heartbeat_timeout} if heartbeat_timeout else {}
  if coordinator:
    if num_processes is None or process_id is None:
      raise ValueError(
          f"A coordinator ({coordinator}) needs the number of processes and this process's id: "
          f"pass --num_processes and --process_id (or set {ENV_NUM_PROCESSES} and "
          f"{ENV_PROCESS_ID}).")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"process_id={process_id} must be in [0, num_processes={num_processes}).")
    if num_processes == 1:
      return False  # a one-process "job": nothing to coordinate
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id,
                               **timeout)
    logging.info("jax.distributed: process %d of %d via %s", jax.process_index(),
                 jax.process_count(), coordinator)
    return True
  cluster = detect_cluster() or ("tpu-vm" if _on_cloud_tpu_vm() else None)
  if mode == "on" or cluster:
    jax.distributed.initialize(**timeout)  # auto-detects the cluster from its environment
    logging.info("jax.distributed (%s): process %d of %d", cluster or "forced",
                 jax.process_index(), jax.process_count())
    return True
  return False


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"Environment variable {name}={value!r} must be an integer.") from None


# ----------------------------------------------------------------- mesh

def _fill(sizes: tuple[int, int], total: int, names: tuple[str, str], what: str) -> tuple[int, int]:
  """Resolves one -1 in a pair of axis sizes so that their product is `total`."""
  a, b = sizes
  if a == -1 and b == -1:
    raise ValueError(f"{names[0]} and {names[1]} cannot both be -1.")
  for v, name in zip(sizes, names):
    if v != -1 and v <= 0:
      raise ValueError(f"{name}={v} must be a positive size or -1.")
  if a == -1:
    a = total // b if total % b == 0 else 0
  if b == -1:
    b = total // a if total % a == 0 else 0
  if a * b != total:
    raise ValueError(
        f"{names[0]}={sizes[0]} x {names[1]}={sizes[1]} does not match the {total} {what}; "
        f"set their product to {total} (or one of them to -1).")
  return a, b


def resolve_mesh_shape(mesh_config, num_devices: int, num_slices: int = 1):
  """((data, fsdp) within a slice, (data, fsdp) across slices) of a mesh config.

  `mesh.data`/`mesh.fsdp` are the sizes over the fast interconnect (ICI: one TPU
  slice, or one GPU host); `mesh.dcn_data`/`mesh.dcn_fsdp` over the slow one
  (DCN: between slices or hosts). One size of each pair may be -1 to take what
  remains. With the DCN sizes left at 1 the whole job is one slice, the mesh
  spans every device, and `num_slices` is not consulted.
  """
  dcn = (int(mesh_config.get("dcn_data", 1)), int(mesh_config.get("dcn_fsdp", 1)))
  ici = (int(mesh_config.data), int(mesh_config.fsdp))
  if dcn == (1, 1):
    return _fill(ici, num_devices, ("config.mesh.data", "config.mesh.fsdp"), "devices"), (1, 1)
  dcn = _fill(dcn, num_slices, ("config.mesh.dcn_data", "config.mesh.dcn_fsdp"),
              "slices (processes where devices have no slice_index)")
  if num_devices % num_slices:
    raise ValueError(f"{num_devices} devices do not split evenly into {num_slices} slices.")
  ici = _fill(ici, num_devices // num_slices, ("config.mesh.data", "config.mesh.fsdp"),
              f"devices per slice ({num_devices} devices / {num_slices} slices)")
  return ici, dcn


def _granule_attr(devices) -> str:
  """Slices where the platform names them (multi-slice TPU), processes otherwise."""
  if all(hasattr(d, "slice_index") for d in devices):
    return "slice_index"
  return "process_index"


def device_grid(mesh_config, devices) -> np.ndarray:
  """The devices arranged as the (data, fsdp) mesh of `mesh_config`."""
  devices = list(devices)
  attr = _granule_attr(devices)
  num_slices = len({getattr(d, attr) for d in devices})
  ici, dcn = resolve_mesh_shape(mesh_config, len(devices), num_slices)
  if dcn == (1, 1):
    return mesh_utils.create_device_mesh(ici, devices)
  # Each slice holds a contiguous block of the mesh, so collectives along the
  # ICI part of an axis stay inside a slice and only the DCN part crosses.
  return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                              process_is_granule=attr == "process_index")


def make_mesh(mesh_config, devices=None) -> Mesh:
  """The (data, fsdp) mesh of a config (ICI and DCN sizes; -1 fills)."""
  devices = list(devices if devices is not None else jax.devices())
  ici, dcn = resolve_mesh_shape(mesh_config, len(devices),
                                len({getattr(d, _granule_attr(devices)) for d in devices}))
  if dcn == (1, 1):
    # Single slice: exactly the mesh this package always built.
    return jax.make_mesh(ici, ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2,
                         devices=devices)
  return Mesh(device_grid(mesh_config, devices), ("data", "fsdp"),
              axis_types=(AxisType.Auto,) * 2)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int = 2 ** 12) -> P:
  """Shard the largest evenly divisible dimension over `fsdp`; small arrays stay replicated."""
  if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for axis in np.argsort(shape)[::-1]:
    if shape[axis] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[axis] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(abstract_state, mesh: Mesh):
  """Shardings of a (shape-only) train state under the FSDP rule."""
  fsdp_size = mesh.shape["fsdp"]

  def one(leaf):
    shape = getattr(leaf, "shape", ())
    return NamedSharding(mesh, fsdp_spec(tuple(shape), fsdp_size))

  return jax.tree.map(one, abstract_state)


def process_batch_slice(global_batch: int, mesh: Mesh | None = None) -> tuple[int, int]:
  """Rows [start, stop) of the global batch that land on this process's devices.

  With a mesh, read off its batch sharding (hybrid and custom device orders
  included); without one, assume devices are process-contiguous. Each process
  must own one contiguous block, which every mesh built by `make_mesh` gives.
  """
  if mesh is None:
    per_process = global_batch // jax.process_count()
    start = jax.process_index() * per_process
    return start, start + per_process
  index_map = batch_sharding(mesh, 1).addressable_devices_indices_map((global_batch,))
  blocks = sorted({(sl[0].start or 0, global_batch if sl[0].stop is None else sl[0].stop)
                   for sl in index_map.values()})
  start, stop = blocks[0]
  for lo, hi in blocks[1:]:
    if lo != stop:
      raise ValueError(
          f"Process {jax.process_index()} holds the non-contiguous batch rows {blocks} of the "
          "mesh; order the mesh's devices so that each process's devices are adjacent along "
          "the (data, fsdp) batch axes (parallel.make_mesh does).")
    stop = hi
  return start, stop


def to_global(local_batch: dict, mesh: Mesh, global_batch: int) -> dict:
  """Per-process numpy arrays -> global jax.Arrays sharded over the batch axes."""
  def one(x):
    x = np.asarray(x)
    global_shape = (global_batch,) + x.shape[1:]
    return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x, global_shape)
  return {k: one(v) for k, v in local_batch.items()}


def sync_processes(name: str) -> None:
  """A barrier across processes (nothing to wait for in a single process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def all_processes_agree(ok: bool) -> bool:
  """True when `ok` holds on every process (one failure fails it for all)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  flags = multihost_utils.process_allgather(np.asarray([int(ok)], np.int32))
  return bool(np.all(flags))
