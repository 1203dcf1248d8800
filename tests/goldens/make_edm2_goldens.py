"""Regenerate tests/goldens/edm2_forward.npz (and print the parameter counts of
tests/test_edm2.py) from the official NVlabs/edm2 training/networks_edm2.py.

Needs torch and numpy, and these files of an official checkout (nothing from it is copied
into jaxdiff):

  mkdir -p /tmp/edm2_ref && cd /tmp/edm2_ref
  for f in training/networks_edm2.py torch_utils/__init__.py torch_utils/persistence.py \
           torch_utils/misc.py dnnlib/__init__.py dnnlib/util.py; do
    mkdir -p $(dirname $f); git --git-dir=<edm2.git> show HEAD:$f > $f; done
  touch training/__init__.py
  python tests/goldens/make_edm2_goldens.py --edm2 /tmp/edm2_ref [--counts]

The golden: the official Precond of a small config built after torch.manual_seed(0) (MPConv
weights ~ N(0, 1), as the official initialises them), its zero-initialised gains (emb_gain,
out_gain) then redrawn to U(0.5, 1.5) (torch.Generator) so that the output is not trivially
c_skip x; the whole state dict (float32, torch key names, the Fourier buffers included), the
inputs (x NHWC, sigma, one-hot labels, one all-zero row = "no label"), the official eval-mode
outputs in float32 on CPU: D_x (NHWC), logvar [B] and the raw UNet output F_x (NHWC) at
c_in x, c_noise; and the stored weights of a few layers after one official *training*
forward (forced weight normalisation, 'fwn/' + key).
"""
import argparse
import copy
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

# Small enough for a < 1 MB file; 2 heads (channels_per_head 16) at 32 channels; attention
# at 8x8 (encoder, decoder and the decoder's in0 block); up and down resampling.
CONFIG = dict(img_resolution=16, img_channels=3, label_dim=10, model_channels=16,
              channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,), channels_per_head=16,
              logvar_channels=128, dropout=0.0)
SIGMA = [0.002, 0.3, 2.5, 80.0]
LABELS = [0, 3, 9, -1]     # -1: an all-zero label row
SEED = 0
FWN_KEYS = ['unet.enc.16x16_conv.weight', 'unet.dec.8x8_in0.attn_qkv.weight',
            'unet.emb_label.weight', 'logvar_linear.weight']


def make(networks, torch):
  torch.manual_seed(SEED)
  net = networks.Precond(use_fp16=False, **CONFIG)
  gen = torch.Generator().manual_seed(1000 + SEED)
  with torch.no_grad():
    for name, p in net.named_parameters():
      if p.ndim == 0:
        p.copy_(0.5 + torch.rand([], generator=gen))
  net.eval()
  rng = np.random.RandomState(SEED)
  res, ch, dim = CONFIG['img_resolution'], CONFIG['img_channels'], CONFIG['label_dim']
  batch = len(SIGMA)
  sigma = np.asarray(SIGMA, np.float32)
  # Noisy images at their noise level: data of std 0.5 plus noise.
  x = (0.5 * rng.standard_normal((batch, res, res, ch))
       + sigma[:, None, None, None] * rng.standard_normal((batch, res, res, ch)))
  x = x.astype(np.float32)
  labels = np.zeros((batch, dim), np.float32)
  for i, y in enumerate(LABELS):
    if y >= 0:
      labels[i, y] = 1
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
  st, lt = torch.from_numpy(sigma), torch.from_numpy(labels)
  with torch.no_grad():
    d_x, logvar = net(xt, st, lt, force_fp32=True, return_logvar=True)
    s4 = st.reshape(-1, 1, 1, 1)
    c_in = 1 / (net.sigma_data ** 2 + s4 ** 2).sqrt()
    f_x = net.unet(c_in * xt, st.log() / 4, lt)
  result = dict(
      x=x, sigma=sigma, class_labels=labels,
      D_x=d_x.permute(0, 2, 3, 1).numpy().astype(np.float32),
      logvar=logvar.reshape(-1).numpy().astype(np.float32),
      F_x=f_x.permute(0, 2, 3, 1).numpy().astype(np.float32),
      config=np.asarray(repr(CONFIG)))
  for key, value in net.state_dict().items():
    result['sd/' + key] = value.numpy().astype(np.float32)

  # One training forward: the official copies normalize(w) into every stored weight.
  trained = copy.deepcopy(net).train()
  trained(xt, st, lt, force_fp32=True, return_logvar=True)
  sd = trained.state_dict()
  for key in FWN_KEYS:
    result['fwn/' + key] = sd[key].detach().numpy().astype(np.float32)

  path = os.path.join(HERE, 'edm2_forward.npz')
  np.savez_compressed(path, **result)
  print(f'{path}: {os.path.getsize(path):,} bytes; {len(net.state_dict())} tensors, '
        f'{sum(p.numel() for p in net.parameters()):,} parameters; |D_x| max '
        f'{np.abs(result["D_x"]).max():.3f}, |F_x| max {np.abs(result["F_x"]).max():.3f}, '
        f'logvar {result["logvar"]}')


def make_pickle(networks, torch):
  """tests/goldens/edm2_precond.pkl: the golden Precond (its state dict from edm2_forward.npz)
  pickled exactly as the official training loop writes a snapshot: an EasyDict of the
  encoder, dataset_kwargs, loss_fn and the EMA network cast to float16; and
  edm2_pickle_outputs.npz: the official D_x and logvar of that float16-stored network on the
  golden inputs (computed in float32, use_fp16=False)."""
  import pickle
  import dnnlib
  from training import encoders, training_loop
  g = np.load(os.path.join(HERE, 'edm2_forward.npz'))
  net = networks.Precond(use_fp16=False, **CONFIG)
  net.load_state_dict({k[len('sd/'):]: torch.from_numpy(g[k]) for k in g.files
                       if k.startswith('sd/')})
  data = dnnlib.EasyDict(encoder=encoders.StandardRGBEncoder(),
                         dataset_kwargs=dnnlib.EasyDict(
                             class_name='training.dataset.ImageFolderDataset',
                             path='datasets/img64.zip', use_labels=True),
                         loss_fn=training_loop.EDM2Loss(P_mean=-0.8, P_std=1.6))
  data.ema = copy.deepcopy(net).cpu().eval().requires_grad_(False).to(torch.float16)
  path = os.path.join(HERE, 'edm2_precond.pkl')
  with open(path, 'wb') as f:
    pickle.dump(data, f)
  with open(path, 'rb') as f:
    ema = pickle.load(f)['ema']
  xt = torch.from_numpy(g['x']).permute(0, 3, 1, 2).contiguous()
  with torch.no_grad():
    d_x, logvar = ema(xt, torch.from_numpy(g['sigma']), torch.from_numpy(g['class_labels']),
                      force_fp32=True, return_logvar=True)
    d_nolabel = ema(xt, torch.from_numpy(g['sigma']), None, force_fp32=True)
  out = os.path.join(HERE, 'edm2_pickle_outputs.npz')
  np.savez_compressed(out, D_x=d_x.permute(0, 2, 3, 1).numpy().astype(np.float32),
                      D_no_labels=d_nolabel.permute(0, 2, 3, 1).numpy().astype(np.float32),
                      logvar=logvar.reshape(-1).numpy().astype(np.float32))
  print(f'{path}: {os.path.getsize(path):,} bytes; {out}')


def counts(networks, torch):
  """Official parameter counts of the ImageNet-64 presets (train_edm2.py edm2-img64-*)."""
  for name, (channels, dropout) in {'XS': (128, 0.0), 'S': (192, 0.0), 'M': (256, 0.1),
                                    'L': (320, 0.1), 'XL': (384, 0.1)}.items():
    with torch.device('meta'):
      net = networks.Precond(img_resolution=64, img_channels=3, label_dim=1000,
                             model_channels=channels, dropout=dropout)
    total = sum(p.numel() for p in net.parameters())
    unet = sum(p.numel() for p in net.unet.parameters())
    print(f"    '{name}': ({total:_}, {unet:_}),")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--edm2', required=True,
                      help='directory holding the official training/networks_edm2.py, '
                           'torch_utils/ and dnnlib/')
  parser.add_argument('--counts', action='store_true')
  parser.add_argument('--pickle', action='store_true',
                      help='write edm2_precond.pkl and edm2_pickle_outputs.npz from '
                           'edm2_forward.npz (needs training/encoders.py, '
                           'training/training_loop.py, torch_utils/distributed.py and '
                           'torch_utils/training_stats.py of the checkout as well)')
  args = parser.parse_args()
  sys.path.insert(0, args.edm2)
  import torch
  from training import networks_edm2 as networks  # the official module
  torch.set_num_threads(1)
  if args.pickle:
    make_pickle(networks, torch)
    return
  make(networks, torch)
  if args.counts:
    counts(networks, torch)


if __name__ == '__main__':
  main()
