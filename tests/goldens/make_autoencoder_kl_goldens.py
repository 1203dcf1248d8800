"""Regenerate tests/goldens/autoencoder_kl_tiny.{safetensors,npz} (and print the parameter
count of tests/test_autoencoder_kl.py) from diffusers' official AutoencoderKL.

Runs only in a scratch environment with the official code; the test suite never imports
diffusers:

  python3 -m venv /tmp/vae_ref && /tmp/vae_ref/bin/pip install torch==2.13.0 \
      diffusers==0.31.0 safetensors numpy
  /tmp/vae_ref/bin/python tests/goldens/make_autoencoder_kl_goldens.py [--counts]
  PYTHONPATH=. /tmp/vae_ref/bin/python tests/goldens/make_autoencoder_kl_goldens.py \
      --check-full    # also needs jax and flax in that environment

The golden: diffusers' AutoencoderKL with a tiny config (three levels, so two down- and two
upsamplings, channel changes in both directions, one resnet per encoder level, two per
decoder level, GroupNorm with 8 groups) built after torch.manual_seed(0) (diffusers' own
init), then every GroupNorm weight redrawn to 1 + 0.25 N(0, 1) and every bias shifted by
0.1 N(0, 1) (a torch.Generator) so that no parameter keeps a trivial value. Written with
`save_pretrained` (diffusers' own `diffusion_pytorch_model.safetensors`, float32); the npz
holds the fixed inputs and the official float32 CPU outputs in NHWC:
x [2, 16, 16, 3] in [-1, 1]; mean, logvar [2, 4, 4, 4] of `encode(x).latent_dist`; a fixed
latent z and `decode(z).sample`; `recon`, the decode of the posterior mean; the diffusers
config as JSON; and (`diffusers_keys`, `ldm_keys`) the CompVis/ldm name of every tensor,
checked here by diffusers' own single-file converter (`convert_ldm_vae_checkpoint`), which
must turn the ldm-named state dict (prefixed `first_stage_model.`, attention weights as 1x1
convs) back into the original exactly.
"""
import argparse
import json
import os
import re
import shutil
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4,
              block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
              down_block_types=('DownEncoderBlock2D',) * 3,
              up_block_types=('UpDecoderBlock2D',) * 3, sample_size=16)
# diffusers' default AutoencoderKL = Stable Diffusion's KL-f8 (sd-vae-ft-ema / -mse).
SD_CONFIG = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                 norm_num_groups=32, down_block_types=('DownEncoderBlock2D',) * 4,
                 up_block_types=('UpDecoderBlock2D',) * 4)
SEED = 0


def perturb(vae, torch):
  gen = torch.Generator().manual_seed(1000 + SEED)
  with torch.no_grad():
    for name, p in vae.named_parameters():
      if 'norm' in name and name.endswith('.weight'):
        p.copy_(1 + 0.25 * torch.randn(p.shape, generator=gen))
      elif name.endswith('.bias'):
        p.add_(0.1 * torch.randn(p.shape, generator=gen))


def ldm_name(key, levels):
  """The CompVis/ldm (and Stable Diffusion checkpoint) name of a diffusers VAE key."""
  k = re.sub(r'^(encoder)\.down_blocks\.(\d+)\.resnets\.', r'\1.down.\2.block.', key)
  k = re.sub(r'^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.', r'encoder.down.\1.downsample.', k)
  k = re.sub(r'^decoder\.up_blocks\.(\d+)\.resnets\.',
             lambda m: f'decoder.up.{levels - 1 - int(m.group(1))}.block.', k)
  k = re.sub(r'^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.',
             lambda m: f'decoder.up.{levels - 1 - int(m.group(1))}.upsample.', k)
  k = re.sub(r'mid_block\.resnets\.(\d)\.', lambda m: f'mid.block_{int(m.group(1)) + 1}.', k)
  for new, old in (('group_norm', 'norm'), ('to_q', 'q'), ('to_k', 'k'), ('to_v', 'v'),
                   ('to_out.0', 'proj_out')):
    k = k.replace(f'mid_block.attentions.0.{new}.', f'mid.attn_1.{old}.')
  return k.replace('conv_shortcut', 'nin_shortcut').replace('conv_norm_out', 'norm_out')


def check_ldm_names(vae, torch):
  from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
  sd = vae.state_dict()
  levels = len(CONFIG['block_out_channels'])
  ldm = {}
  for k, v in sd.items():
    if '.mid.attn_1.' in ldm_name(k, levels) and v.ndim == 2:
      v = v[:, :, None, None]            # ldm's attention q/k/v/proj_out are 1x1 convs
    ldm['first_stage_model.' + ldm_name(k, levels)] = v
  back = convert_ldm_vae_checkpoint(ldm, dict(vae.config))
  assert sorted(back) == sorted(sd), set(back) ^ set(sd)
  for k, v in sd.items():
    assert torch.equal(back[k], v), k
  return np.asarray(list(sd)), np.asarray([ldm_name(k, levels) for k in sd])


def nhwc(t):
  return t.detach().cpu().numpy().transpose(0, 2, 3, 1).astype(np.float32)


def make(out_dir):
  # save_pretrained calls safetensors.torch, which newer safetensors releases no longer
  # import with `import safetensors`.
  import safetensors.torch  # noqa: F401
  import torch
  from diffusers import AutoencoderKL
  torch.manual_seed(SEED)
  vae = AutoencoderKL(**CONFIG).eval()
  perturb(vae, torch)
  rng = np.random.RandomState(SEED)
  x = rng.uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
  z = rng.standard_normal((2, 4, 4, 4)).astype(np.float32)
  with torch.no_grad():
    dist = vae.encode(torch.from_numpy(x)).latent_dist
    dec = vae.decode(torch.from_numpy(z)).sample
    recon = vae(torch.from_numpy(x), sample_posterior=False).sample
  diffusers_keys, ldm_keys = check_ldm_names(vae, torch)
  with tempfile.TemporaryDirectory() as tmp:
    vae.save_pretrained(tmp, safe_serialization=True)
    shutil.copyfile(os.path.join(tmp, 'diffusion_pytorch_model.safetensors'),
                os.path.join(out_dir, 'autoencoder_kl_tiny.safetensors'))
    with open(os.path.join(tmp, 'config.json')) as f:
      config_json = f.read()
  np.savez(os.path.join(out_dir, 'autoencoder_kl_tiny.npz'),
           x=nhwc(torch.from_numpy(x)), mean=nhwc(dist.mean), logvar=nhwc(dist.logvar),
           z=nhwc(torch.from_numpy(z)), decoded=nhwc(dec), recon=nhwc(recon),
           config_json=np.asarray(config_json), diffusers_keys=diffusers_keys,
           ldm_keys=ldm_keys)
  n = sum(p.numel() for p in vae.parameters())
  print(f'tiny: {n} parameters; mean |mean| {np.abs(nhwc(dist.mean)).mean():.3f}, '
        f'logvar range [{nhwc(dist.logvar).min():.2f}, {nhwc(dist.logvar).max():.2f}], '
        f'|decoded| max {np.abs(nhwc(dec)).max():.3f}')


def counts():
  import diffusers
  from diffusers import AutoencoderKL
  vae = AutoencoderKL(**SD_CONFIG)
  print(f'diffusers {diffusers.__version__} SD KL-f8 AutoencoderKL: '
        f'{sum(p.numel() for p in vae.parameters())} parameters; config '
        f'{json.dumps({k: v for k, v in vae.config.items() if not k.startswith("_")})}')


def check_full():
  """The full SD VAE (diffusers' init, perturbed) against jaxdiff's on one 64x64 image; needs
  jaxdiff and jax importable (PYTHONPATH=<repo>); writes nothing to the repository."""
  import safetensors.torch  # noqa: F401
  import torch
  from diffusers import AutoencoderKL
  from jaxdiff.convert.autoencoder_kl import load_autoencoder_kl
  from jaxdiff.models import autoencoder_kl
  torch.manual_seed(1)
  ref = AutoencoderKL(**SD_CONFIG).eval()
  perturb(ref, torch)
  rng = np.random.RandomState(1)
  x = torch.from_numpy(rng.uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32))
  z = torch.from_numpy(rng.standard_normal((1, 4, 8, 8)).astype(np.float32))
  with torch.no_grad():
    dist, dec = ref.encode(x).latent_dist, ref.decode(z).sample
  with tempfile.TemporaryDirectory() as tmp:
    ref.save_pretrained(tmp)
    config, params = load_autoencoder_kl(tmp)
  vae = autoencoder_kl.AutoencoderKL(**config)
  mean, logvar = vae.apply({'params': params}, nhwc(x), method=vae.encode)
  out = vae.apply({'params': params}, nhwc(z), method=vae.decode)
  for name, ours, official in (('mean', mean, dist.mean), ('logvar', logvar, dist.logvar),
                               ('decode', out, dec)):
    official = nhwc(official)
    err = np.abs(np.asarray(ours) - official).max() / np.abs(official).max()
    print(f'full SD VAE {name}: max |jaxdiff - diffusers| / max |diffusers| = {err:.1e}')


if __name__ == '__main__':
  parser = argparse.ArgumentParser()
  parser.add_argument('--out', default=HERE)
  parser.add_argument('--counts', action='store_true', help='also print the SD VAE count')
  parser.add_argument('--check-full', action='store_true',
                      help='also compare the full SD VAE with jaxdiff (needs jaxdiff)')
  args = parser.parse_args()
  make(args.out)
  if args.counts:
    counts()
  if args.check_full:
    check_full()
