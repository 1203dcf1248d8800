"""SiT-XL/2 on ImageNet 256 latents with the difficulty curriculum (arXiv 2403.10348).

  python -m jaxdiff.main --config=configs/imagenet256_sit_curriculum.py --workdir=runs/sit_cur \
      --config.data.autoencoder=SD_VAE/diffusion_pytorch_model.safetensors

configs/imagenet256_sit.py (imported) with the curriculum: t in [0, 1] cut into 20 equal
intervals, trained from the noisiest (t near 1) down, patience pacing with the
reimplementation's values (docs/curriculum.md#pacing).
"""
from configs import common, imagenet256_sit


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = imagenet256_sit.get_config("")
  common.paper_curriculum(c, kind="uniform")
  if arg == "smoke":
    common.smoke_dit(c)
    c.flow.num_steps = 4
  return c
