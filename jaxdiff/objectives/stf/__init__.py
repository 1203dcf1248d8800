"""Stable Target Field (Xu, Tong, Jaakkola, ICLR 2023, arXiv 2302.00670; docs/stf.md).

  target.py     the pure math: the reference-set target `stf_target` (public API),
                its weights and logits, and the sharded global variants
  objective.py  the `stf` objective: EDM's loss with the STF target, per-device or
                global reference sets
"""
from jaxdiff.objectives.stf.target import stf_logits
from jaxdiff.objectives.stf.target import stf_target
from jaxdiff.objectives.stf.target import stf_target_global
from jaxdiff.objectives.stf.target import stf_target_sharded
from jaxdiff.objectives.stf.target import stf_weights

__all__ = ["stf_logits", "stf_target", "stf_target_global", "stf_target_sharded", "stf_weights"]
