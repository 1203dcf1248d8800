"""The train state: everything a run needs to continue exactly where it stopped."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  step: jax.Array             # int32 scalar: number of updates applied
  params: Any
  ema_params: Any             # EDM-style EMA of params, sharded like params
  opt_state: Any
  rng: jax.Array              # raw base key data (config.rng_impl); each step folds in `step`
  aux: Any                    # objective state: teacher, discriminator, ADA p, ...
  nonfinite_steps: jax.Array  # int32: total updates skipped for non-finite gradients
  nonfinite_streak: jax.Array  # int32: skipped in a row (the run stops past a limit)
