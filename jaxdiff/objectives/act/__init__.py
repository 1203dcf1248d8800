"""Adversarial Consistency Training (Kong et al., CVPR 2024, arXiv 2311.14097; docs/act.md).

  math.py       the pure schedules (public API: `act_schedule`, `act_time_weight`,
                `ada_update`)
  augment.py    differentiable adaptive augmentation of the discriminator inputs
  settings.py   the `act` config keys and their checks
  objective.py  the `act` objective: the consistency core on ACT's schedule, the
                time-conditioned discriminator, R1 and ADA in one jitted update
The discriminator network is `jaxdiff/models/discriminator.py`.
"""
from jaxdiff.objectives.act.math import act_schedule
from jaxdiff.objectives.act.math import act_time_weight
from jaxdiff.objectives.act.math import ada_update

__all__ = ["act_schedule", "act_time_weight", "ada_update"]
