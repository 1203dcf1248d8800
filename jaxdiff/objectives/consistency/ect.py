"""ECT: easy consistency tuning (Geng, Pokle, Luo, Lin, Kolter, ICLR 2025,
arXiv 2406.14548; docs/ect.md). Official code: locuslab/ect.

t ~ the noise sampler (lognormal; the curriculum restricts it), r = ect_r(t,
stage) with the stage a traced function of the step; the teacher is the
student's own weights under stop-gradient, and at r = 0 the target is the clean
image. ECT trains with EDM's coefficients and samples with the CM boundary at
0.003, as locuslab/ect's ECMPrecond switches on `self.training`. ECT tunes a
pretrained diffusion model: `init_from` names one, or `consistency.pretrain_steps`
trains one first (`pretrain_config`).
"""
from __future__ import annotations

from jaxdiff import console
from jaxdiff.errors import ConfigError
from jaxdiff.objectives.consistency.family import ConsistencyObjective
from jaxdiff.objectives.consistency.math import ect_r, ect_stage
from jaxdiff.objectives.consistency.settings import AutoDefaults
from jaxdiff.objectives.registry import register

MAPPINGS = ("sigmoid", "const")

CONFIG = {"consistency": dict(
    # r = ect_r(t, stage; q, k, b, mapping), stage = step // stage_steps (from 0; CIFAR-10:
    # 250 ticks x 12.8 kimg / batch 128 = 25k). smooth_stage: the fractional stage
    # step / stage_steps (an SCT option of ours, docs/sct.md#what-jaxdiff-implements).
    stage_steps=25000,
    smooth_stage=False,
    q=2.0,
    k=8.0,
    b=1.0,
    mapping="sigmoid",
    # When init_from is empty and pretrain_steps > 0, an EDM run of this model and data is
    # trained first into <workdir>/pretrain and this run starts from its EMA weights.
    pretrain_steps=0,
    pretrain_lr=2e-3,
    pretrain_warmup_steps=200,
    pretrain_ema_halflife_kimg=50.0,
)}


@register("ect")
class ECT(ConsistencyObjective):
  # EDM coefficients in training, CM boundary at 0.003 for sampling, L2 (pseudo-Huber
  # c = 0) and weight 1/(t - r): ECT's CIFAR-10 settings.
  AUTO = AutoDefaults(train_precond="edm", sample_sigma_min=0.003, metric="pseudo_huber",
                      weighting="ect", huber_c=0.0)
  config_keys = CONFIG
  clean_boundary = True

  def __init__(self, *args, stage_steps: int = 25000, smooth_stage: bool = False,
               q: float = 2.0, k: float = 8.0, b: float = 1.0, mapping: str = "sigmoid", **kw):
    super().__init__(*args, **kw)
    self.stage_steps, self.smooth_stage = int(stage_steps), bool(smooth_stage)
    self.q, self.k, self.b, self.mapping = float(q), float(k), float(b), mapping

  @classmethod
  def validate_config(cls, config, num_devices=None):
    super().validate_config(config, num_devices)
    c = config.consistency
    if c.mapping not in MAPPINGS:
      raise ConfigError(f"config.consistency.mapping={c.mapping!r} is not allowed; choose one "
                        f"of {MAPPINGS}.")
    if int(c.stage_steps) < 1:
      raise ConfigError(f"config.consistency.stage_steps={c.stage_steps!r} must be an integer "
                        ">= 1 (CIFAR-10 ECT: 25000).")

  @classmethod
  def method_kwargs(cls, config):
    c = config.consistency
    return dict(stage_steps=c.stage_steps, smooth_stage=c.smooth_stage, q=c.q, k=c.k, b=c.b,
                mapping=c.mapping)

  def schedule(self, step):
    return {"stage": ect_stage(step, self.stage_steps, continuous=self.smooth_stage)}

  def sample_times(self, key, batch, step, dtype):
    sched = self.schedule(step)
    t = self.noise_sampler(key, (batch,), dtype)
    r = ect_r(t, sched["stage"], self.q, self.k, self.b, mapping=self.mapping).astype(dtype)
    return t, r, sched

  # ---------------------------------------------------------------- the EDM phase

  @classmethod
  def pretrain_config(cls, config):
    """The EDM run whose EMA weights this run tunes, when init_from is empty.

    Same data, model and mesh (so the weights fit); EDM's objective and noise
    distribution, Adam with `pretrain_lr` and warm-up, EDM half-life EMA, no
    curriculum, `pretrain_steps` steps. None (with a warning) when there is
    neither an init_from nor a pre-training budget.
    """
    p = config.consistency
    if config.init_from:
      return None
    if not p.pretrain_steps:
      console.warn(f"{cls.name.upper()} tunes a pretrained diffusion model, but "
                   "config.init_from is empty and config.consistency.pretrain_steps = 0: "
                   "starting from random weights.")
      return None
    c = config.copy_and_resolve_references()
    c.objective.name = "edm"
    c.objective.p_mean = -1.2
    c.objective.p_std = 1.2
    c.optim.name = "adam"
    c.optim.lr = float(p.pretrain_lr)
    c.optim.b1, c.optim.b2 = 0.9, 0.999
    c.optim.warmup_steps = int(p.pretrain_warmup_steps)
    c.ema.kind = "halflife"
    c.ema.halflife_kimg = float(p.pretrain_ema_halflife_kimg)
    c.train.num_steps = int(p.pretrain_steps)
    c.train.ckpt_every = min(int(c.train.ckpt_every), int(p.pretrain_steps))
    c.train.sample_every = 0
    c.curriculum.enabled = False
    c.init_from = ""
    c.consistency.pretrain_steps = 0
    c.consistency.guidance = "none"
    return c
