"""SiT-XL/2 on class-conditional ImageNet 256x256 latents (Ma et al. 2024), curriculum off.

  python -m jaxdiff.main --config=configs/imagenet256_sit.py --workdir=runs/sit_xl2 \
      --config.data.autoencoder=SD_VAE/diffusion_pytorch_model.safetensors
  python -m jaxdiff.main --config=configs/imagenet256_sit.py:smoke --workdir=/tmp/sit_smoke

SiT is DiT's backbone and training setup with the diffusion replaced by an interpolant
(willisma/SiT train.py; docs/flow.md): the linear path between data and noise, velocity
prediction, t ~ U(0, 1), no learned variance. Data, AdamW 1e-4, batch 256, EMA 0.9999, label
dropout 0.1 and the 400K-step ablation length are DiT's (configs/imagenet256_dit.py, whose
data pieces this recipe shares through configs/common.py). Prepare the latents as there.

Deviations: SiT's best FID (2.06, SDE sampler, guidance 1.5) uses an Euler-Maruyama SDE
sampler, and its ODE results an adaptive dopri5 solver; jaxdiff samples the ODE with Heun's
method, 125 steps (250 network calls), guidance 1.5. The network receives t itself, as SiT
feeds DiT's timestep embedder; jaxdiff's t = 1 is noise (docs/flow.md states the convention).
"""
from configs import common


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = common.base_config()
  common.imagenet256_latents(c, batch_size=256)
  common.dit_network(c, "DiT-XL/2", learn_sigma=False)
  c.objective.name = "flow"
  c.flow.time_scale = 1.0
  c.flow.solver = "heun"
  c.flow.num_steps = 125
  c.flow.guidance_scale = 1.5
  c.curriculum.kind = "uniform"     # equal intervals of t, when the curriculum is enabled
  c.train.loss_buckets = 10
  common.dit_training(c, num_steps=400_000, every=50_000)
  if arg == "smoke":
    common.smoke_dit(c)
    c.flow.num_steps = 4
  return c
