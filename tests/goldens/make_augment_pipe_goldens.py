"""Regenerate tests/goldens/augment_pipe_*.npz from the official EDM AugmentPipe.

Needs torch and an extracted NVlabs/edm checkout (its torch_utils, dnnlib and
training/augment.py; nothing from it is copied here):

  git --git-dir=<edm.git> archive HEAD torch_utils dnnlib training | tar x -C /tmp/edm_ref
  python tests/goldens/make_augment_pipe_goldens.py --edm /tmp/edm_ref

The official pipeline runs in torch on CPU (NCHW) with a fixed seed while
torch.rand / torch.randn / torch.randint are wrapped to record every draw in call
order. The draws are then gated exactly as the official code gates them (the same
float32 torch expressions) and stored in jaxdiff.augment.AugmentParams'
layout, next to the input, the official output (NHWC) and labels, and the margins
the official code padded by (recorded from torch.nn.functional.pad).
"""
import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

ALL = dict(xflip=1, yflip=1, rotate_int=1, translate_int=1, scale=1, rotate_frac=1, aniso=1,
           translate_frac=1, brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
GEOM = dict(scale=1, rotate_frac=1, aniso=1, translate_frac=1)
COLOR = dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
EDM_CIFAR10 = dict(p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)


def smooth_images(rng, n, h, w, c):
  """Smooth random patterns in [-1, 1] with a little pixel noise (NHWC)."""
  yy, xx = np.meshgrid(np.arange(h) / h, np.arange(w) / w, indexing="ij")
  out = np.zeros((n, h, w, c))
  for i in range(n):
    for ch in range(c):
      for _ in range(4):
        fx, fy = rng.uniform(0.3, 2.5, size=2)
        ph = rng.uniform(0, 2 * np.pi)
        out[i, :, :, ch] += rng.uniform(0.2, 0.5) * np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
  out += 0.05 * rng.standard_normal(out.shape)
  return np.clip(out, -1, 1).astype(np.float32)


class Recorder:
  def __init__(self, torch):
    self.torch = torch
    self.orig = dict(rand=torch.rand, randn=torch.randn, randint=torch.randint)
    self.draws = []
    self.pads = []
    self.orig_pad = torch.nn.functional.pad

  def __enter__(self):
    t = self.torch
    for name, fn in self.orig.items():
      def wrapper(*a, _fn=fn, _name=name, **k):
        out = _fn(*a, **k)
        self.draws.append((_name, out.clone()))
        return out
      setattr(t, name, wrapper)

    def pad(*a, **k):
      self.pads.append([int(v) for v in k["pad"]])
      return self.orig_pad(*a, **k)
    t.nn.functional.pad = pad
    return self

  def __exit__(self, *exc):
    for name, fn in self.orig.items():
      setattr(self.torch, name, fn)
    self.torch.nn.functional.pad = self.orig_pad


def params_from_draws(torch, pipe, draws, n):
  """Gate the recorded draws as AugmentPipe.__call__ does, in its order."""
  it = iter(draws)

  def take(kind):
    name, value = next(it)
    assert name == kind, (name, kind)
    return value

  def gated(w, r, thresh):
    return torch.where(r < thresh, w, torch.zeros_like(w))

  out = {}
  for name in ("xflip", "yflip", "rotate_int"):
    if getattr(pipe, name) > 0:
      w = take("randint")
      w = gated(w, take("rand"), getattr(pipe, name) * pipe.p)
      out[name] = w.reshape(n).numpy().astype(np.int32)
  if pipe.translate_int > 0:
    w = take("rand") * 2 - 1
    w = gated(w, take("rand"), pipe.translate_int * pipe.p)
    out["translate_int"] = w.reshape(2, n).T.numpy()
  if pipe.scale > 0:
    w = take("randn")
    out["scale"] = gated(w, take("rand"), pipe.scale * pipe.p).numpy()
  if pipe.rotate_frac > 0:
    w = (take("rand") * 2 - 1) * (np.pi * pipe.rotate_frac_max)
    out["rotate_frac"] = gated(w, take("rand"), pipe.rotate_frac * pipe.p).numpy()
  if pipe.aniso > 0:
    w = take("randn")
    r = (take("rand") * 2 - 1) * np.pi
    w = gated(w, take("rand"), pipe.aniso * pipe.p)
    r = gated(r, take("rand"), pipe.aniso_rotate_prob)
    out["aniso"], out["aniso_angle"] = w.numpy(), r.numpy()
  if pipe.translate_frac > 0:
    w = take("randn")
    w = gated(w, take("rand"), pipe.translate_frac * pipe.p)
    out["translate_frac"] = w.T.numpy()
  if pipe.brightness > 0:
    w = take("randn")
    out["brightness"] = gated(w, take("rand"), pipe.brightness * pipe.p).numpy()
  if pipe.contrast > 0:
    w = take("randn")
    out["contrast"] = gated(w, take("rand"), pipe.contrast * pipe.p).numpy()
  if pipe.lumaflip > 0:
    w = take("randint")
    w = gated(w, take("rand"), pipe.lumaflip * pipe.p)
    out["lumaflip"] = w.reshape(n).numpy().astype(np.int32)
  if pipe.hue > 0:
    w = (take("rand") * 2 - 1) * (np.pi * pipe.hue_max)
    out["hue"] = gated(w, take("rand"), pipe.hue * pipe.p).numpy()
  if pipe.saturation > 0:
    w = take("randn")
    out["saturation"] = gated(w, take("rand"), pipe.saturation * pipe.p).reshape(n).numpy()
  assert next(it, None) is None, "unconsumed draws"
  return {k: np.asarray(v, np.float32 if v.dtype.kind == "f" else np.int32) for k, v in out.items()}


def run_case(torch, AugmentPipe, name, kwargs, x_nhwc, seed):
  pipe = AugmentPipe(**kwargs)
  n = x_nhwc.shape[0]
  torch.manual_seed(seed)
  with Recorder(torch) as rec:
    y, labels = pipe(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).contiguous())
  params = params_from_draws(torch, pipe, rec.draws, n)
  entry = {f"{name}/y": y.permute(0, 2, 3, 1).numpy().astype(np.float32),
           f"{name}/labels": labels.numpy().astype(np.float32),
           f"{name}/pad": np.asarray(rec.pads, np.int32).reshape(-1, 4)}
  entry.update({f"{name}/params/{k}": v for k, v in params.items()})
  meta = {"kwargs": kwargs, "seed": seed}
  return entry, meta


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--edm", required=True, help="extracted NVlabs/edm checkout")
  ap.add_argument("--out", default=HERE)
  args = ap.parse_args()
  sys.path.insert(0, args.edm)
  import torch
  from training.augment import AugmentPipe
  torch.set_num_threads(1)

  rng = np.random.default_rng(20220601)
  x16 = smooth_images(rng, 4, 16, 16, 3)
  files = {
      "single": [(name, {"p": 1, name: 1}, x16) for name in ALL],
      "combo": [
          ("geometric", dict(p=1, **GEOM), x16),
          ("geometric_strong", dict(p=1, scale_std=1.0, **GEOM), x16),
          # Zoom-out by up to 1.85x with the batch margin (13 px) below its clamp (15):
          # the official zero region beyond the margin reaches the output border.
          ("scale_zoom_out", dict(p=1, scale=1, scale_std=0.5), x16, 2007),
          ("geometric_nonsquare", dict(p=1, **GEOM), smooth_images(rng, 4, 12, 16, 3)),
          ("color", dict(p=1, **COLOR), x16),
          ("color_gray", dict(p=1, **COLOR), smooth_images(rng, 4, 16, 16, 1)),
          ("everything", dict(p=1, **ALL), x16),
      ],
      # Seed 7: four of the eight samples get a geometric transform.
      "edm_cifar10": [("edm_cifar10", EDM_CIFAR10, smooth_images(rng, 8, 32, 32, 3), 7)],
  }
  for fname, cases in files.items():
    arrays, meta, inputs = {}, {}, []
    for i, (name, kwargs, x, *seed) in enumerate(cases):
      # Inputs are stored once per file: "{name}/x_ref" names the "inputs/<i>" array.
      ref = next((j for j, other in enumerate(inputs) if other is x), None)
      if ref is None:
        ref = len(inputs)
        inputs.append(x)
        arrays[f"inputs/{ref}"] = x
      arrays[f"{name}/x_ref"] = np.asarray(f"inputs/{ref}")
      seed = seed[0] if seed else 1000 + i
      entry, m = run_case(torch, AugmentPipe, name, kwargs, x, seed)
      while not entry[f"{name}/labels"].any():  # every case must do something
        seed += 100
        entry, m = run_case(torch, AugmentPipe, name, kwargs, x, seed)
      arrays.update(entry)
      meta[name] = m
    arrays["meta"] = np.asarray(json.dumps(meta))
    path = os.path.join(args.out, f"augment_pipe_{fname}.npz")
    np.savez_compressed(path, **arrays)
    print(path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
  main()
