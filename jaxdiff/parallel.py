"""Device mesh, shardings and multi-host start-up.

The mesh has two axes: `data` (pure data parallelism) and `fsdp` (data
parallelism that also shards parameters and optimizer state). The batch is
split over both; a parameter is split over `fsdp` along its largest dimension
that divides evenly (the big_vision "fsdp" rule), and replicated otherwise.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def maybe_initialize_distributed(coordinator: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None,
                                 local_device_count: int | None = None) -> None:
  """Starts JAX's distributed runtime when this is a multi-process job.

  TPU pods and SLURM are detected by `jax.distributed.initialize()` itself;
  other clusters (and `launch/local.sh`) pass an explicit coordinator through
  arguments or the JAXDIFF_COORDINATOR / JAXDIFF_NUM_PROCESSES /
  JAXDIFF_PROCESS_ID environment variables. A plain single process skips it.
  """
  coordinator = coordinator or os.environ.get("JAXDIFF_COORDINATOR")
  if num_processes is None and "JAXDIFF_NUM_PROCESSES" in os.environ:
    num_processes = int(os.environ["JAXDIFF_NUM_PROCESSES"])
  if process_id is None and "JAXDIFF_PROCESS_ID" in os.environ:
    process_id = int(os.environ["JAXDIFF_PROCESS_ID"])
  if local_device_count is None and "JAXDIFF_LOCAL_DEVICES" in os.environ:
    local_device_count = int(os.environ["JAXDIFF_LOCAL_DEVICES"])
  if coordinator:
    if local_device_count:
      # CPU-only multi-process (tests, laptops): split the host into devices.
      jax.config.update("jax_num_cpu_devices", local_device_count)
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    logging.info("jax.distributed: process %d of %d via %s", jax.process_index(),
                 jax.process_count(), coordinator)
    return
  managed = ("SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1) or (
      "TPU_WORKER_HOSTNAMES" in os.environ and "," in os.environ["TPU_WORKER_HOSTNAMES"])
  if managed:
    jax.distributed.initialize()  # auto-detects the cluster from its environment
    logging.info("jax.distributed (auto): process %d of %d", jax.process_index(),
                 jax.process_count())


def make_mesh(mesh_config, devices=None) -> Mesh:
  """A (data, fsdp) mesh; one size may be -1 to take the remaining devices."""
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  data, fsdp = int(mesh_config.data), int(mesh_config.fsdp)
  if data == -1 and fsdp == -1:
    raise ValueError("config.mesh.data and config.mesh.fsdp cannot both be -1.")
  if data == -1:
    data = n // fsdp
  if fsdp == -1:
    fsdp = n // data
  if data * fsdp != n or data <= 0 or fsdp <= 0:
    raise ValueError(
        f"config.mesh.data={mesh_config.data} x config.mesh.fsdp={mesh_config.fsdp} does not "
        f"match the {n} devices; set their product to {n} (or one of them to -1).")
  return jax.make_mesh((data, fsdp), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2,
                       devices=devices)


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


def process_batch_slice(global_batch: int) -> tuple[int, int]:
  """Rows of the global batch that this process feeds (devices are process-contiguous)."""
  per_process = global_batch // jax.process_count()
  start = jax.process_index() * per_process
  return start, start + per_process


def to_global(local_batch: dict, mesh: Mesh, global_batch: int) -> dict:
  """Per-process numpy arrays -> global jax.Arrays sharded over the batch axes."""
  def one(x):
    x = np.asarray(x)
    global_shape = (global_batch,) + x.shape[1:]
    return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x, global_shape)
  return {k: one(v) for k, v in local_batch.items()}
