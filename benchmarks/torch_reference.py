"""PyTorch reference of the jaxdiff EDM recipe, for side-by-side speed comparison only.

A from-scratch PyTorch implementation of the network, loss and optimizer that
`jaxdiff` trains in its EDM DDPM++ recipe, so that `benchmarks/run.py` can time
both on the same machine, at the same batch, in the same invocation:

  network    EDM's SongUNet, DDPM++ variant (Karras et al. 2022, NVlabs/edm
             `training/networks.py`): positional noise embedding, standard
             encoder/decoder, box-filter resampling, GroupNorm(min(32, C/4)),
             one-head self-attention at `attn_resolutions`. Same layers, widths
             and parameter count as `jaxdiff.models.SongUNet` (the harness
             asserts the count).
  loss       EDM: ln sigma ~ N(-1.2, 1.2^2); lambda(sigma) ||D(y + sigma n) - y||^2
             summed over pixels, mean over the batch; D = c_skip x + c_out F(c_in x, ln(sigma)/4).
  optimizer  Adam (lr 1e-3, betas 0.9/0.999, eps 1e-8) then a parameter EMA, as
             `jaxdiff.train.step` does.

Layout: NCHW tensors; `channels_last=True` stores activations and conv weights
channels-last (NHWC in memory), which lets oneDNN pick its faster kernels on CPU.
`device='cuda'` runs it on a GPU. Eager mode by default (`compile_backend` wraps the
network in `torch.compile`, `bf16` runs it under autocast); eager is issue 9's target
("jaxdiff >= PyTorch eager"). PyTorch is a benchmark-only extra
(`pip install -e .[bench]`), never a dependency of jaxdiff; nothing in `jaxdiff/`
imports this file.

Only the DDPM++ variant is implemented (the recipe benchmarked); NCSN++'s Fourier
embedding, residual encoder and (1,3,3,1) FIR filter are not.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

SKIP_SCALE = math.sqrt(0.5)
NORM_EPS = 1e-6


def _xavier_uniform_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
  """EDM's xavier_uniform (fans include the receptive field) times `scale`."""
  receptive = weight[0, 0].numel() if weight.dim() > 2 else 1
  fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
  limit = math.sqrt(6.0 / (fan_in + fan_out))
  with torch.no_grad():
    weight.uniform_(-limit, limit).mul_(scale)
  return weight


class Linear(nn.Module):

  def __init__(self, in_features: int, out_features: int, bias: bool = True,
               init_weight: float = 1.0):
    super().__init__()
    self.weight = nn.Parameter(_xavier_uniform_(torch.empty(out_features, in_features),
                                                init_weight))
    self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

  def forward(self, x):
    return F.linear(x, self.weight, self.bias)


class Conv2d(nn.Module):
  """k x k convolution with an optional 2x box-filter up/down-sampling before it.

  The (1, 1) resample filter of DDPM++ is exactly nearest-neighbour upsampling
  (EDM's transposed conv with 4 * f) and 2x2 average pooling (its strided conv).
  `kernel == 0` is a parameter-free resampler.
  """

  def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True,
               up: bool = False, down: bool = False, init_weight: float = 1.0):
    super().__init__()
    self.up, self.down, self.pad = up, down, kernel // 2
    self.weight = (nn.Parameter(_xavier_uniform_(
        torch.empty(out_channels, in_channels, kernel, kernel), init_weight))
                   if kernel else None)
    self.bias = nn.Parameter(torch.zeros(out_channels)) if kernel and bias else None

  def forward(self, x):
    if self.up:
      x = F.interpolate(x, scale_factor=2, mode='nearest')
    if self.down:
      x = F.avg_pool2d(x, 2)
    if self.weight is not None:
      x = F.conv2d(x, self.weight, self.bias, padding=self.pad)
    return x


class GroupNorm(nn.Module):

  def __init__(self, channels: int, num_groups: int = 32, min_channels_per_group: int = 4):
    super().__init__()
    self.groups = min(num_groups, channels // min_channels_per_group)
    self.weight = nn.Parameter(torch.ones(channels))
    self.bias = nn.Parameter(torch.zeros(channels))

  def forward(self, x):
    return F.group_norm(x, self.groups, self.weight, self.bias, NORM_EPS)


class UNetBlock(nn.Module):

  def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up=False,
               down=False, attention=False, dropout=0.0, use_sdpa: bool = True):
    super().__init__()
    self.attention, self.dropout, self.use_sdpa = attention, dropout, use_sdpa
    self.norm0 = GroupNorm(in_channels)
    self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down)
    self.affine = Linear(emb_channels, out_channels)
    self.norm1 = GroupNorm(out_channels)
    self.conv1 = Conv2d(out_channels, out_channels, 3, init_weight=1e-5)
    self.skip = None
    if out_channels != in_channels or up or down:
      self.skip = Conv2d(in_channels, out_channels, 1, up=up, down=down)
    if attention:
      self.norm2 = GroupNorm(out_channels)
      self.qkv = Conv2d(out_channels, out_channels * 3, 1, init_weight=math.sqrt(0.2))
      self.proj = Conv2d(out_channels, out_channels, 1, init_weight=1e-5)

  def forward(self, x, emb):
    orig = x
    x = self.conv0(F.silu(self.norm0(x)))
    x = F.silu(self.norm1(x + self.affine(emb)[:, :, None, None]))
    x = F.dropout(x, p=self.dropout, training=self.training)
    x = self.conv1(x)
    x = (x + (self.skip(orig) if self.skip is not None else orig)) * SKIP_SCALE
    if self.attention:
      b, c, h, w = x.shape
      # EDM's channel layout of the 1x1 qkv output: [heads=1, c, 3].
      qkv = self.qkv(self.norm2(x)).reshape(b, c, 3, h * w)
      q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # [b, hw, c]
      if self.use_sdpa:
        a = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
      else:
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=-1)
        a = weights @ v
      a = a.transpose(1, 2).reshape(b, c, h, w)
      x = (self.proj(a) + x) * SKIP_SCALE
    return x


class SongUNetDDPMpp(nn.Module):
  """EDM's SongUNet with the DDPM++ settings; x [B, C, H, W], noise_labels [B]."""

  def __init__(self, img_resolution: int, in_channels: int, out_channels: int,
               label_dim: int = 0, augment_dim: int = 0, model_channels: int = 128,
               channel_mult: Sequence[int] = (2, 2, 2), channel_mult_emb: int = 4,
               num_blocks: int = 4, attn_resolutions: Sequence[int] = (16,),
               dropout: float = 0.13, use_sdpa: bool = True):
    super().__init__()
    emb_channels = model_channels * channel_mult_emb
    noise_channels = model_channels  # channel_mult_noise = 1 for DDPM++
    self.noise_channels = noise_channels
    self.map_label = Linear(label_dim, noise_channels) if label_dim else None
    self.map_augment = Linear(augment_dim, noise_channels, bias=False) if augment_dim else None
    self.map_layer0 = Linear(noise_channels, emb_channels)
    self.map_layer1 = Linear(emb_channels, emb_channels)
    block = lambda cin, cout, **kw: UNetBlock(cin, cout, emb_channels, dropout=dropout,
                                              use_sdpa=use_sdpa, **kw)

    self.enc = nn.ModuleDict()
    cout = in_channels
    skip_channels = []
    for level, mult in enumerate(channel_mult):
      res = img_resolution >> level
      if level == 0:
        cin, cout = cout, model_channels
        self.enc[f'{res}x{res}_conv'] = Conv2d(cin, cout, 3)
      else:
        self.enc[f'{res}x{res}_down'] = block(cout, cout, down=True)
      skip_channels.append(cout)
      for idx in range(num_blocks):
        cin, cout = cout, model_channels * mult
        self.enc[f'{res}x{res}_block{idx}'] = block(cin, cout,
                                                     attention=res in attn_resolutions)
        skip_channels.append(cout)

    self.dec = nn.ModuleDict()
    for level, mult in reversed(list(enumerate(channel_mult))):
      res = img_resolution >> level
      if level == len(channel_mult) - 1:
        self.dec[f'{res}x{res}_in0'] = block(cout, cout, attention=True)
        self.dec[f'{res}x{res}_in1'] = block(cout, cout)
      else:
        self.dec[f'{res}x{res}_up'] = block(cout, cout, up=True)
      for idx in range(num_blocks + 1):
        cin, cout = cout + skip_channels.pop(), model_channels * mult
        self.dec[f'{res}x{res}_block{idx}'] = block(
            cin, cout, attention=idx == num_blocks and res in attn_resolutions)
      if level == 0:
        self.dec[f'{res}x{res}_aux_norm'] = GroupNorm(cout)
        self.dec[f'{res}x{res}_aux_conv'] = Conv2d(cout, out_channels, 3, init_weight=1e-5)

  def embed_noise(self, noise_labels):
    half = self.noise_channels // 2
    freqs = torch.arange(half, dtype=torch.float32, device=noise_labels.device) / (half - 1)
    freqs = (1.0 / 10000) ** freqs
    x = noise_labels.float()[:, None] * freqs[None, :]
    return torch.cat([x.sin(), x.cos()], dim=1)  # SongUNet's order after its swap

  def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
    emb = self.embed_noise(noise_labels)
    if self.map_label is not None and class_labels is not None:
      emb = emb + self.map_label(class_labels * math.sqrt(self.map_label.weight.shape[1]))
    if self.map_augment is not None and augment_labels is not None:
      emb = emb + self.map_augment(augment_labels)
    emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

    skips = []
    for name, module in self.enc.items():
      x = module(x) if name.endswith('_conv') else module(x, emb)
      skips.append(x)
    aux = None
    for name, module in self.dec.items():
      if name.endswith('_aux_norm'):
        tmp = module(x)
      elif name.endswith('_aux_conv'):
        aux = module(F.silu(tmp))
      else:
        if '_block' in name:
          x = torch.cat([x, skips.pop()], dim=1)
        x = module(x, emb)
    return aux


def count_params(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())


class EDMTrainer:
  """One EDM training step: loss, backward, Adam, EMA; everything on CPU tensors."""

  def __init__(self, model: nn.Module, lr: float = 1e-3, ema_decay: float = 0.999,
               sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2,
               channels_last: bool = True, device: str = 'cpu', seed: int = 0,
               bf16: bool = False, compile_backend: str | None = None):
    torch.manual_seed(seed)
    self.channels_last = channels_last
    self.device = device
    # bf16: the network runs under torch.autocast (bf16 matmuls and convolutions, fp32
    # parameters, optimizer and loss), as jaxdiff's model.dtype='bfloat16'.
    self.bf16 = bf16
    model = model.to(device)
    self.model = model.to(memory_format=torch.channels_last) if channels_last else model
    self.model.train()
    self.params = [p for p in self.model.parameters()]
    # torch.compile of the network (forward and backward); 'inductor' is PyTorch's default.
    self.net = torch.compile(self.model, backend=compile_backend) if compile_backend else self.model
    self.ema = [p.detach().clone() for p in self.params]
    # foreach: PyTorch's fastest eager Adam on CPU (multi-tensor kernels).
    self.opt = torch.optim.Adam(self.params, lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                foreach=True)
    self.ema_decay = ema_decay
    self.sigma_data, self.p_mean, self.p_std = sigma_data, p_mean, p_std

  def loss(self, images: torch.Tensor) -> torch.Tensor:
    b = images.shape[0]
    sigma = torch.exp(torch.randn(b, device=images.device) * self.p_std + self.p_mean)
    sd2 = self.sigma_data ** 2
    weight = (sigma ** 2 + sd2) / (sigma * self.sigma_data) ** 2
    s = sigma[:, None, None, None]
    x = images + torch.randn_like(images) * s
    c_skip = sd2 / (s ** 2 + sd2)
    c_out = s * self.sigma_data / (s ** 2 + sd2).sqrt()
    c_in = 1 / (s ** 2 + sd2).sqrt()
    with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.bf16):
      f = self.net(c_in * x, sigma.log() / 4)
    f = f.float()
    denoised = c_skip * x + c_out * f
    per_sample = weight * ((denoised - images) ** 2).flatten(1).sum(1)
    return per_sample.mean()

  def step(self, images: torch.Tensor) -> float:
    if self.channels_last:
      images = images.contiguous(memory_format=torch.channels_last)
    self.opt.zero_grad(set_to_none=True)
    loss = self.loss(images)
    loss.backward()
    self.opt.step()
    with torch.no_grad():
      torch._foreach_lerp_(self.ema, self.params, 1.0 - self.ema_decay)
    return loss.detach()


def build(image_size: int, channels: int, *, model_channels: int, channel_mult, num_blocks: int,
          attn_resolutions, channel_mult_emb: int = 4, dropout: float = 0.13,
          label_dim: int = 0, augment_dim: int = 0, channels_last: bool = True,
          use_sdpa: bool = True, device: str = 'cpu', seed: int = 0, bf16: bool = False,
          compile_backend: str | None = None) -> EDMTrainer:
  torch.manual_seed(seed)
  model = SongUNetDDPMpp(image_size, channels, channels, label_dim=label_dim,
                         augment_dim=augment_dim, model_channels=model_channels,
                         channel_mult=tuple(channel_mult), channel_mult_emb=channel_mult_emb,
                         num_blocks=num_blocks, attn_resolutions=tuple(attn_resolutions),
                         dropout=dropout, use_sdpa=use_sdpa)
  return EDMTrainer(model, channels_last=channels_last, device=device, seed=seed, bf16=bf16,
                    compile_backend=compile_backend)
