"""Regenerate tests/goldens/dit_*.npz (and print the parameter counts of tests/test_dit.py)
from the official facebookresearch/DiT models.py.

Needs torch and timm (DiT's models.py imports timm's PatchEmbed, Attention and Mlp) and a
checkout of the official repository; nothing from it is copied here:

  git --git-dir=<DiT.git> show HEAD:models.py > /tmp/dit_ref/models.py
  python tests/goldens/make_dit_goldens.py --dit /tmp/dit_ref [--counts]

timm imports torchvision at import time for features DiT does not use; without torchvision
installed, ``--stub-torchvision`` puts a placeholder module in its place.

Each golden: the official DiT built with a fixed seed, every parameter except pos_embed then
redrawn (torch.Generator seed) to O(1)-output values so that the adaLN-Zero / zero-final
layers do not make the output trivially zero; the whole state dict (float32, torch key
names, pos_embed included), the inputs (x NHWC, t, y), the official eval-mode forward (NHWC)
and, where the model has a null class, forward_with_cfg on the doubled batch (its first half,
NHWC) at cfg_scale 4.
"""
import argparse
import importlib.abc
import importlib.machinery
import os
import sys
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

GOLDENS = {
    # depth 2, D 32, 4 heads, patch 2, 8x8x4 latents, 10 classes + null, learn_sigma.
    'dit_tiny': dict(
        model=dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2,
                   num_heads=4, num_classes=10, class_dropout_prob=0.1, learn_sigma=True),
        t=[0.0, 17.0, 421.5, 999.0], y=[0, 3, 9, 10], cfg_scale=4.0, seed=0),
    # depth 1, D 32, 2 heads, patch 4, 16x16x3 images, 5 classes, no null row, no sigma.
    'dit_p4': dict(
        model=dict(input_size=16, patch_size=4, in_channels=3, hidden_size=32, depth=1,
                   num_heads=2, num_classes=5, class_dropout_prob=0.0, learn_sigma=False),
        t=[3.0, 640.0], y=[4, 1], cfg_scale=None, seed=1),
}


def stub_torchvision():
  """Placeholder torchvision: any attribute is a class that cannot be instantiated."""

  class Meta(type):
    def __getattr__(cls, name):
      if name.startswith('__'):
        raise AttributeError(name)
      return Meta(name, (Dummy,), {})

  class Dummy(metaclass=Meta):
    def __init__(self, *a, **k):
      raise NotImplementedError('torchvision stub')

  def module_getattr(name):
    if name.startswith('__'):
      raise AttributeError(name)
    return Meta(name, (Dummy,), {})

  class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
      if name == 'torchvision' or name.startswith('torchvision.'):
        return importlib.machinery.ModuleSpec(name, self, is_package=True)
      return None

    def create_module(self, spec):
      module = types.ModuleType(spec.name)
      module.__path__ = []
      module.__getattr__ = module_getattr
      return module

    def exec_module(self, module):
      pass

  sys.meta_path.insert(0, Finder())


def randomize(torch, model, seed):
  """Weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2), label table ~ N(0, 0.5^2)."""
  gen = torch.Generator().manual_seed(1000 + seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name == 'pos_embed':
        continue
      noise = torch.randn(p.shape, generator=gen)
      if name.endswith('embedding_table.weight'):
        p.copy_(0.5 * noise)
      elif p.ndim >= 2:
        p.copy_(noise / np.sqrt(np.prod(p.shape[1:])))
      else:
        p.copy_(0.1 * noise)


def make(models, torch, name, spec):
  torch.manual_seed(spec['seed'])
  model = models.DiT(**spec['model'])
  randomize(torch, model, spec['seed'])
  model.eval()
  cfg = spec['model']
  rng = np.random.RandomState(spec['seed'])
  batch = len(spec['t'])
  x = rng.standard_normal((batch, cfg['input_size'], cfg['input_size'],
                           cfg['in_channels'])).astype(np.float32)
  t = np.asarray(spec['t'], np.float32)
  y = np.asarray(spec['y'], np.int64)
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
  with torch.no_grad():
    out = model(xt, torch.from_numpy(t), torch.from_numpy(y))
    result = dict(x=x, t=t, y=y, out=out.permute(0, 2, 3, 1).numpy().astype(np.float32),
                  config_keys=np.asarray(sorted(cfg)),
                  config_values=np.asarray([float(cfg[k]) for k in sorted(cfg)]))
    if spec['cfg_scale'] is not None:
      null = torch.full_like(torch.from_numpy(y), cfg['num_classes'])
      out_cfg = model.forward_with_cfg(
          torch.cat([xt, xt]), torch.from_numpy(np.concatenate([t, t])),
          torch.cat([torch.from_numpy(y), null]), spec['cfg_scale'])
      result['cfg_scale'] = np.float32(spec['cfg_scale'])
      result['out_cfg'] = out_cfg[:batch].permute(0, 2, 3, 1).numpy().astype(np.float32)
  for key, value in model.state_dict().items():
    result['sd/' + key] = value.numpy().astype(np.float32)
  path = os.path.join(HERE, name + '.npz')
  np.savez_compressed(path, **result)
  print(f'{path}: {os.path.getsize(path):,} bytes, |out| max {np.abs(result["out"]).max():.3f}')


def counts(models, torch):
  """Official parameter counts for 32x32x4 latents (256 px), 1000 classes, learn_sigma."""
  for name, fn in models.DiT_models.items():
    with torch.device('meta'):
      model = fn(input_size=32, num_classes=1000)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"    '{name}': ({total:_}, {model.pos_embed.numel():_}),   # trainable {trainable:_}")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--dit', required=True, help='directory holding the official models.py')
  parser.add_argument('--stub-torchvision', action='store_true')
  parser.add_argument('--counts', action='store_true')
  args = parser.parse_args()
  if args.stub_torchvision:
    stub_torchvision()
  sys.path.insert(0, args.dit)
  import torch
  import models  # the official facebookresearch/DiT models.py
  torch.set_num_threads(1)
  for name, spec in GOLDENS.items():
    make(models, torch, name, spec)
  if args.counts:
    counts(models, torch)


if __name__ == '__main__':
  main()
