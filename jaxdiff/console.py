"""The progress stream a person watches: one line at a time, from process 0 only.

Every line also goes to the absl log (all processes), where the detail of a
failure lives too.
"""
from __future__ import annotations

import jax
from absl import logging


def log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)
  logging.info(msg)


def warn(msg: str) -> None:
  """A warning a user must see: `WARNING: ...` on the console, a warning in the log."""
  if jax.process_index() == 0:
    print(f"WARNING: {msg}", flush=True)
  logging.warning(msg)
