"""Consistency training from data: CT, iCT, ECT and SCT (docs/consistency.md).

  math.py      the pure schedules, grids, distances and weights (public API:
               `ect_r`, `ct_schedule`, `pseudo_huber`)
  settings.py  the `consistency` config keys the family shares, "auto" defaults
  core.py      the shared loss core: student/teacher points, distance, weighting,
               sampling forms and guidance
  family.py    the family as an `Objective` (loss, guidance snapshot, sampling weights)
  ct.py        CT   (Song et al. 2023): Karras grid, N(k) and EMA teacher mu(k)
  ict.py       iCT  (Song & Dhariwal 2023): doubling grid, discretised lognormal
  ect.py       ECT  (Geng et al. 2024): continuous t, r = ect_r(t, stage), EDM phase
  sct.py       SCT  (Wang, Geng, Li 2024): ECT with the STF teacher point, phases
"""
from jaxdiff.objectives.consistency.math import ct_schedule
from jaxdiff.objectives.consistency.math import ect_r
from jaxdiff.objectives.consistency.math import pseudo_huber
from jaxdiff.objectives.consistency.settings import resolve_settings

__all__ = ["ct_schedule", "ect_r", "pseudo_huber", "resolve_settings"]
