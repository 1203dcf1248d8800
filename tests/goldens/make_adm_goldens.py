"""Regenerate tests/goldens/adm_forward.npz and adm_cond.pkl with the official NVlabs/edm code.

Needs torch and an extracted NVlabs/edm checkout (its torch_utils, dnnlib and training/;
nothing from it is copied here):

  git --git-dir=<edm.git> archive HEAD torch_utils dnnlib training | tar x -C /tmp/edm_ref
  python tests/goldens/make_adm_goldens.py --edm /tmp/edm_ref

One tiny EDMPrecond(DhariwalUNet) is built with the official classes (seeded): 8x8x3,
10 classes, augment_dim 9, model_channels 8, channel_mult [1, 2], one block per level,
attention at 4x4. DhariwalUNet fixes 64 channels per attention head, which needs networks
far over the goldens' size budget; so the official `UNetBlock` is subclassed here to pass
channels_per_head=4 (2 and 4 heads), everything else is the official code. Every parameter
is then redrawn (the zero-initialised conv1 / proj / out_conv included) so that each weight
shows in the output.

  adm_forward.npz  the official state (`state/<key>`, PyTorch layout, float32), fixed NHWC
                   inputs and the raw network's F (eval mode) with and without augment
                   labels; the EDMPrecond D(x; sigma) of the pickle (`pkl/...`).
  adm_cond.pkl     the same network saved as training/training_loop.py saves a snapshot.
"""
import argparse
import copy
import math
import os
import pickle
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SIGMAS = np.asarray([0.002, 0.3, 2.0, 80.0], np.float32)
CHANNELS_PER_HEAD = 4
KWARGS = dict(model_type="DhariwalUNet", model_channels=8, channel_mult=[1, 2],
              channel_mult_emb=4, num_blocks=1, attn_resolutions=[4], augment_dim=9,
              dropout=0.1, use_fp16=False)


def small_heads(networks):
  """The official UNetBlock with channels_per_head=CHANNELS_PER_HEAD (tiny networks)."""
  base = networks.UNetBlock

  class UNetBlock(base):
    def __init__(self, *args, **kwargs):
      kwargs["channels_per_head"] = CHANNELS_PER_HEAD
      super().__init__(*args, **kwargs)

  networks.UNetBlock = UNetBlock


def redraw(torch, net, seed):
  """Every parameter from N(0, 1/fan_in) (weights) or around its init (norms, biases)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in net.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      if p.ndim > 1:
        p.copy_(noise / math.sqrt(p[0].numel()))
      elif "norm" in name and name.endswith(".weight"):
        p.copy_(1 + 0.2 * noise)
      else:
        p.copy_(0.2 * noise)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--edm", required=True, help="extracted NVlabs/edm checkout")
  args = parser.parse_args()
  sys.path.insert(0, os.path.abspath(args.edm))
  import torch
  from training import augment, loss, networks
  small_heads(networks)

  torch.manual_seed(0)
  net = networks.EDMPrecond(img_resolution=8, img_channels=3, label_dim=10, **KWARGS)
  redraw(torch, net, 100)
  data = dict(ema=net, loss_fn=loss.EDMLoss(),
              augment_pipe=augment.AugmentPipe(p=0.12, xflip=1e8, yflip=1, scale=1),
              dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset",
                                  path="datasets/imagenet-8x8.zip", use_labels=True,
                                  xflip=False, cache=True, resolution=8, max_size=1000))
  for key, value in data.items():  # as training/training_loop.py does
    if isinstance(value, torch.nn.Module):
      data[key] = copy.deepcopy(value).eval().requires_grad_(False).cpu()
  with open(os.path.join(HERE, "adm_cond.pkl"), "wb") as f:
    pickle.dump(data, f)
  net = data["ema"]

  rng = np.random.RandomState(7)
  x = (rng.standard_normal((4, 8, 8, 3)) * np.maximum(SIGMAS, 0.5)[:, None, None, None])
  x = x.astype(np.float32)
  labels = np.eye(10, dtype=np.float32)[rng.randint(0, 10, 4)]
  aug = rng.standard_normal((4, 9)).astype(np.float32)
  noise = (np.log(SIGMAS) / 4).astype(np.float32)
  nchw = lambda a: torch.from_numpy(a.transpose(0, 3, 1, 2).copy())
  nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)
  with torch.no_grad():
    model = net.model
    f = nhwc(model(nchw(x), torch.from_numpy(noise), torch.from_numpy(labels),
                   torch.from_numpy(aug)))
    f_no_aug = nhwc(model(nchw(x), torch.from_numpy(noise), torch.from_numpy(labels)))
    d = nhwc(net(nchw(x), torch.from_numpy(SIGMAS), torch.from_numpy(labels)))
    d_none = nhwc(net(nchw(x), torch.from_numpy(SIGMAS), None))
  out = {"x": x, "noise_labels": noise, "class_labels": labels, "augment_labels": aug,
         "F": f, "F_no_augment": f_no_aug, "pkl/sigma": SIGMAS, "pkl/D": d,
         "pkl/D_no_labels": d_none}
  out.update({f"state/{k}": v.numpy().astype(np.float32)
              for k, v in model.state_dict().items()})
  np.savez_compressed(os.path.join(HERE, "adm_forward.npz"), **out)
  print("params", sum(p.numel() for p in model.parameters()), "|F|", np.abs(f).max(),
        "|D|", np.abs(d).max())


if __name__ == "__main__":
  main()
