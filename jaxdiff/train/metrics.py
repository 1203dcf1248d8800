"""Logging on process 0: TensorBoard events, a metrics.jsonl, and a progress line."""
from __future__ import annotations

import json
import math
import os
import time

import jax
import numpy as np


def _import_summary_writer():
  """tensorboardX's SummaryWriter, without letting it import PyTorch.

  tensorboardX imports torch (when installed) only to recognise torch tensors;
  we pass numpy. Hiding torch for this one import saves ~2.5 s of CPU at the
  start of every run; torch stays importable afterwards.
  """
  import sys
  if "torch" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None  # makes `import torch` raise ImportError
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


class MetricWriter:
  """Writes scalars to TensorBoard (tensorboardX, no TensorFlow) and metrics.jsonl."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self._tb = None
    self._jsonl = None
    if self.enabled:
      SummaryWriter = _import_summary_writer()
      os.makedirs(workdir, exist_ok=True)
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      path = os.path.join(workdir, "metrics.jsonl")
      self._jsonl = open(path, "a")
      if self._jsonl.tell() > 0:
        with open(path, "rb") as f:
          f.seek(-1, os.SEEK_END)
          if f.read(1) != b"\n":
            # A run killed mid-write left half a line: end it, so the lines of
            # the resumed run stay parseable (readers skip the broken one).
            self._jsonl.write("\n")

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    clean = {}
    for k, v in scalars.items():
      v = float(np.asarray(v))
      clean[k] = v
      if math.isfinite(v):
        self._tb.add_scalar(k, v, step)
    self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
    self._jsonl.flush()

  def write_image(self, step: int, tag: str, image_hwc_uint8: np.ndarray) -> None:
    if self.enabled:
      self._tb.add_image(tag, image_hwc_uint8, step, dataformats="HWC")

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


class Progress:
  """`step 1200/5000  loss 0.412  3.1 steps/s  ETA 20m25s` every few seconds."""

  def __init__(self, total_steps: int, start_step: int):
    self.total = total_steps
    self._t0 = time.perf_counter()
    self._s0 = start_step

  def rate(self, step: int) -> float:
    elapsed = time.perf_counter() - self._t0
    return (step - self._s0) / elapsed if elapsed > 0 else 0.0

  def line(self, step: int, loss: float, extra: str = "") -> str:
    rate = self.rate(step)
    eta = (self.total - step) / rate if rate > 0 else float("nan")
    eta_s = f"{int(eta // 60)}m{int(eta % 60):02d}s" if math.isfinite(eta) else "?"
    return f"step {step}/{self.total}  loss {loss:.4f}  {rate:.2f} steps/s  ETA {eta_s}{extra}"
