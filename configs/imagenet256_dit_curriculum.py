"""DiT-XL/2 on ImageNet 256 latents with the difficulty curriculum (arXiv 2403.10348).

  python -m jaxdiff.main --config=configs/imagenet256_dit_curriculum.py --workdir=runs/dit_cur \
      --config.data.autoencoder=SD_VAE/diffusion_pytorch_model.safetensors
  python -m jaxdiff.main --config=configs/imagenet256_dit_curriculum.py:smoke --workdir=/tmp/s

Everything of configs/imagenet256_dit.py (imported: the two stay the same run but for the
curriculum), plus the paper's curriculum in its own setting: the 1000 DDPM timesteps cut into
20 equal intervals (`curriculum.kind=uniform`), trained from the highest-noise cluster down,
stage by stage, then on all timesteps; patience pacing on the training loss. The paper's tau
and how it smooths the loss are not published: the values are the reimplementation's
(docs/curriculum.md#pacing); ANT's SNR clusters are `--config.curriculum.kind=snr`.
"""
from configs import common, imagenet256_dit


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = imagenet256_dit.get_config("")
  common.paper_curriculum(c, kind="uniform")
  if arg == "smoke":
    common.smoke_dit(c)
    c.ddpm.sample_steps = "10"
  return c
