"""Regenerate tests/goldens/edm_*.pkl and edm_pickle_outputs.npz with the official NVlabs/edm code.

Needs torch and an extracted NVlabs/edm checkout (its torch_utils, dnnlib and training/;
nothing from it is copied here):

  git --git-dir=<edm.git> archive HEAD torch_utils dnnlib training | tar x -C /tmp/edm_ref
  python tests/goldens/make_edm_pickle_goldens.py --edm /tmp/edm_ref

Two tiny networks are built with the official classes (seeded), every parameter is
redrawn (so that no layer is near its identity initialisation and every weight shows in
the output), and each is saved exactly as training/training_loop.py saves a snapshot:
`pickle.dump(dict(ema=..., loss_fn=..., augment_pipe=..., dataset_kwargs=...))`.

  edm_ddpmpp_cond.pkl  EDMPrecond(SongUNet DDPM++), 8x8x1, 10 classes, augment_dim 9
  edm_ncsnpp_ve.pkl    VEPrecond(SongUNet NCSN++), 8x8x3, unconditional (Fourier embedding)

The official forward (CPU, float32, eval mode) of each on fixed inputs is stored in
edm_pickle_outputs.npz (NHWC): x, sigma, class_labels and D(x; sigma) with the labels and
with class_labels=None.
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

NETS = {
    "ddpmpp_cond": dict(
        precond="EDMPrecond", img_channels=1, label_dim=10,
        kwargs=dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard",
                    decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1],
                    model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                    augment_dim=9, dropout=0.13, use_fp16=False),
        dataset="datasets/digits-8x8.zip"),
    "ncsnpp_ve": dict(
        precond="VEPrecond", img_channels=3, label_dim=0,
        kwargs=dict(model_type="SongUNet", embedding_type="fourier", encoder_type="residual",
                    decoder_type="standard", channel_mult_noise=2, resample_filter=[1, 3, 3, 1],
                    model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                    dropout=0.0, use_fp16=False),
        dataset="datasets/synthetic-8x8.zip"),
}


def redraw(torch, net, seed):
  """Every parameter from N(0, 1/fan_in) (weights) or around its init (norms, biases)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in net.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      if p.ndim > 1:
        p.copy_(noise / math.sqrt(p[0].numel()))
      elif name.endswith("norm0.weight") or name.endswith("norm1.weight") or \
          name.endswith("norm2.weight") or name.endswith("aux_norm.weight"):
        p.copy_(1 + 0.2 * noise)
      else:
        p.copy_(0.2 * noise)


def build(torch, networks, loss, augment, dnnlib, spec, seed):
  torch.manual_seed(seed)
  cls = getattr(networks, spec["precond"])
  net = cls(img_resolution=8, img_channels=spec["img_channels"], label_dim=spec["label_dim"],
            **spec["kwargs"])
  redraw(torch, net, seed + 100)
  dataset_kwargs = dnnlib.EasyDict(class_name="training.dataset.ImageFolderDataset",
                                   path=spec["dataset"], use_labels=spec["label_dim"] > 0,
                                   xflip=False, cache=True, resolution=8, max_size=1000)
  data = dict(ema=net, loss_fn=loss.EDMLoss(),
              augment_pipe=augment.AugmentPipe(p=0.12, xflip=1e8, yflip=1, scale=1),
              dataset_kwargs=dict(dataset_kwargs))
  for key, value in data.items():  # as training/training_loop.py does
    if isinstance(value, torch.nn.Module):
      data[key] = copy.deepcopy(value).eval().requires_grad_(False).cpu()
  return data


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--edm", required=True, help="extracted NVlabs/edm checkout")
  args = parser.parse_args()
  sys.path.insert(0, os.path.abspath(args.edm))
  import dnnlib
  import torch
  from training import augment, loss, networks

  out = {"sigma": SIGMAS}
  for i, (name, spec) in enumerate(NETS.items()):
    data = build(torch, networks, loss, augment, dnnlib, spec, seed=i)
    with open(os.path.join(HERE, f"edm_{name}.pkl"), "wb") as f:
      pickle.dump(data, f)
    rng = np.random.RandomState(10 + i)
    c = spec["img_channels"]
    x = (rng.standard_normal((4, 8, 8, c)) * np.maximum(SIGMAS, 0.5)[:, None, None, None])
    x = x.astype(np.float32)
    labels = np.eye(max(spec["label_dim"], 1), dtype=np.float32)[rng.randint(0, 10, 4) %
                                                                  max(spec["label_dim"], 1)]
    net = data["ema"]
    with torch.no_grad():
      xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
      st = torch.from_numpy(SIGMAS)
      lab = torch.from_numpy(labels) if spec["label_dim"] else None
      d = net(xt, st, lab).numpy().transpose(0, 2, 3, 1)
      d_none = net(xt, st, None).numpy().transpose(0, 2, 3, 1)
    out.update({f"{name}/x": x, f"{name}/class_labels": labels, f"{name}/D": d,
                f"{name}/D_no_labels": d_none})
    print(name, "params", sum(p.numel() for p in net.parameters()), "|D|", np.abs(d).max())
  np.savez_compressed(os.path.join(HERE, "edm_pickle_outputs.npz"), **out)


if __name__ == "__main__":
  main()
