"""DiT-XL/2 on class-conditional ImageNet 256x256 latents (Peebles & Xie 2023), curriculum off.

  # once: the images (ADM's centre crop to 256), then their KL-f8 latents (docs/latents.md)
  python -m jaxdiff.prepare_data --dataset=imagenet256 --source=IMAGENET_TRAIN_FOLDER \
      --resolution=256 --transform=adm --encode_with=SD_VAE/diffusion_pytorch_model.safetensors
  python -m jaxdiff.main --config=configs/imagenet256_dit.py --workdir=runs/dit_xl2 \
      --config.data.autoencoder=SD_VAE/diffusion_pytorch_model.safetensors
  python -m jaxdiff.main --config=configs/imagenet256_dit.py:smoke --workdir=/tmp/dit_smoke

The paper's setting (facebookresearch/DiT train.py and the paper, Sec. 4; docs/dit.md):
DiT-XL/2 (675,129,632 parameters) with learned variance and the hybrid loss (simple MSE +
the variational bound); DDPM with T = 1000 linear betas (1e-4 .. 0.02); latents of
stabilityai/sd-vae-ft-ema times 0.18215, one posterior draw per image and step, random
horizontal flips (of the image, before encoding); label dropout 0.1; AdamW, lr 1e-4
constant, no weight decay, batch 256; EMA 0.9999. 400K steps is the length of the paper's
ablations (its headline DiT-XL/2 trained 7M steps: --config.train.num_steps=7000000).
Sampling: 250 respaced ancestral steps with classifier-free guidance 1.5 (FID-50K 2.27 at
7M steps, reported); FID needs ADM's reference batch statistics,
--config.eval.reference_stats=VIRTUAL_imagenet256_labeled.npz (its mu and sigma).

Deviations: float32 unless --config.model.dtype=bfloat16; the latents are encoded once with
both orientations' posterior moments stored, so each step's draw is fresh as in DiT's loop
but the encoder runs once (docs/latents.md). The curriculum version of this recipe is
configs/imagenet256_dit_curriculum.py.

`:smoke` runs anywhere: a 2-block DiT on generated 8x8 labelled images (pixel space).
"""
from configs import common


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = common.base_config()
  common.imagenet256_latents(c, batch_size=256)
  common.dit_network(c, "DiT-XL/2", learn_sigma=True)
  c.objective.name = "ddpm"
  c.ddpm.num_timesteps = 1000
  c.ddpm.beta_schedule = "linear"
  c.ddpm.sampler = "ancestral"
  c.ddpm.sample_steps = "250"
  c.ddpm.guidance_scale = 1.5
  c.curriculum.kind = "uniform"     # used only when the curriculum is enabled
  c.train.loss_buckets = 10
  common.dit_training(c, num_steps=400_000, every=50_000)
  if arg == "smoke":
    common.smoke_dit(c)
    c.ddpm.sample_steps = "10"
  return c
