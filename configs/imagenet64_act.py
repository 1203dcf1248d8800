"""ACT on class-conditional ImageNet 64x64 (Kong et al. 2024; kong13661/ACT train_imagenet64.py).

  python -m jaxdiff.prepare_data --dataset=imagenet_resized/64x64 --data_dir=$DATA
  python -m jaxdiff.main --config=configs/imagenet64_act.py --workdir=runs/imagenet64_act \
      --config.data.data_dir=$DATA
  python -m jaxdiff.main --config=configs/imagenet64_act.py:smoke --workdir=/tmp/in64_act_smoke

Official settings (docs/act.md#defaults): generator batch 320 (per device in the code; here
global: scale it with your device count), 400k iterations, lr 5e-5 for both
networks, RAdam (0, 0.99) / (0, 0.99 * 16/17), N 2 -> 200, mu0 0.95, lambda
lam0 * w(t_j) with lam0 0.6 and w_mid 0.2 (the same w weights the discriminator
terms and R1), R1 gamma 10 every 16 steps, ADA threshold 1e7 (augmentation in
effect off), 1000-class embeddings in both networks, one-step FID 10.6 in the
paper. Discriminator: 128 x (1, 2, 2, 4, 4), 3 blocks per level, attention at
16x16, no final GroupNorm. The official run used fp16 mixed precision; here
`--config.model.dtype=bfloat16` gives bf16 compute with fp32 parameters.

Deviations: jaxdiff's SongUNet generator at ACT's layout (128 x (1, 2, 2, 4, 4),
2 blocks, attention at 16x16) instead of diffusers' UNet2DModel; pseudo-Huber
instead of LPIPS.
"""
from configs import common, digits_act


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = common.base_config()
  common.tfds_images(c, "imagenet_resized/64x64", 64, batch_size=320, num_classes=1000,
                     random_flip=True)
  common.ddpmpp(c, 128, (1, 2, 2, 4, 4), 2, (16,), dropout=0.0)
  common.act_method(c, lam0=0.6, w_mid=0.2, n_max=200, mu0=0.95, lr=5e-5, ada_threshold=1e7)
  common.discriminator(c, 128, (1, 2, 2, 4, 4), 3, (16,), final_norm=False)
  common.paper_run(c, 400000, every=5000)
  if arg == "smoke":
    digits_act.apply_smoke(c, num_classes=10)  # digits' 10 labels: class-conditional
  return c
