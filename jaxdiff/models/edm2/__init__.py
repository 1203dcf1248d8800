"""EDM2's magnitude-preserving UNet and its preconditioning, in Flax Linen, NHWC.

Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models"
(arXiv 2312.02696), official code ``NVlabs/edm2`` ``training/networks_edm2.py`` (``UNet``,
``Block``, ``MPConv``, ``MPFourier``, ``Precond``) with the presets of ``train_edm2.py``.
This is an independent re-implementation with the same layers, order, initialisation and
parameter count; an official state dict maps onto it with ``params_from_official_state_dict``.
See docs/edm2.md.

Network (Figure 21 of the paper, "config G")::

  emb = mp_silu(mp_sum(MPConv(MPFourier(c_noise)), MPConv(onehot * sqrt(label_dim)), 0.5))
  x = concat([x, ones])                       (a constant ones channel, last in NHWC)
  encoder: MPConv 3x3, then per level [down Block] + num_blocks enc Blocks; every output
           is a skip
  decoder: lowest level in0 (attention) + in1, other levels an up Block; then
           num_blocks + 1 dec Blocks, each after x = mp_cat(x, skip, 0.5)
  out = MPConv 3x3 with the learned gain ``out_gain`` (0 at init: the output starts at 0)

Block (enc): resample, 1x1 MPConv if the width changes, pixel norm; residual branch
``conv_res1(dropout(mp_silu(conv_res0(mp_silu(x)) * (1 + emb_linear(emb) * emb_gain))))``;
``x = mp_sum(x, res, 0.3)``; optional attention (qkv 1x1, per-head pixel norm of q, k, v,
softmax(q k / sqrt(c)), proj 1x1), ``x = mp_sum(x, attn, 0.3)``; clip to +-256. Block (dec)
takes the 1x1 skip conv after the residual branch instead, and has no pixel norm.

Every weight is an ``MPConv``: the stored weight ``w`` is used as
``normalize(w) * gain / sqrt(fan_in)`` (each output unit normalised over its fan-in, Eq. 47 /
66), so the network is invariant to the scale of each unit's weights. The official training
forward in addition re-normalises the *stored* weight in place ("forced weight
normalisation"); here that is the pure function ``force_normalize(params)``, which the train
step applies to the parameters before computing the gradients (the official order; see its
docstring). Without it, training still runs but the effective learning rate decays as the
weight norms grow, which the paper's design avoids.

Interfaces:

  ``EDM2UNet``: jaxdiff's raw network, ``apply({'params': p}, x, noise_labels,
      class_labels=None, augment_labels=None, train=False, rngs={'dropout': key})`` returning
      the raw F with x's shape and dtype (``noise_labels`` = c_noise = ln(sigma)/4;
      ``jaxdiff.diffusion.precond.edm_precond`` gives c_in, c_skip, c_out as EDM2's Precond).
  ``EDM2LogVar``: the learned per-noise-level log variance u(sigma) of EDM2's loss (Eq. 21),
      ``apply({'params': p}, c_noise) -> [B]``.
  ``edm2_denoise``: the official ``Precond`` output D(x; sigma) (and logvar) from the two.
  ``EDM2Denoiser``: the two as one module (params ``{'unet', 'logvar'}``), what
      ``build_model`` returns for ``model.name='edm2'``: called as the UNet, with
      ``log_variance(c_noise)`` for the uncertainty-weighted loss.

Fourier features. The official ``MPFourier`` keeps ``freqs = 2 pi N(0, 1)`` and
``phases = 2 pi U(0, 1)`` as torch buffers drawn from the global RNG at construction. Here they
are *constants* (not parameters, not variables), drawn from ``numpy.random.RandomState(seed)``
(``fourier_seed``: 0 for the UNet, 1 for the log-variance head), so that
``apply({'params': p}, ...)`` needs nothing else and the parameter count equals the official.
To run an official checkpoint, pass its buffers: ``fourier_buffers_from_official_state_dict``
returns them as the constructor arguments ``noise_freqs`` / ``noise_phases`` (``EDM2UNet``)
and ``freqs`` / ``phases`` (``EDM2LogVar``).

Parameter tree (official ``Precond`` keys -> ours, as ``params_from_official_state_dict``
maps them): ``unet.enc.16x16_block0.conv_res0.weight`` -> ``enc_16x16_block0/conv_res0/kernel``,
``unet.emb_noise.weight`` -> ``emb_noise/kernel``, ``unet.out_gain`` -> ``out_gain``,
``unet.dec.8x8_in0.emb_gain`` -> ``dec_8x8_in0/emb_gain``, ``logvar_linear.weight`` ->
``EDM2LogVar``'s ``linear/kernel``.

Logical axis names (``nn.with_logical_partitioning``; all in ``layers.LOGICAL_AXIS_NAMES``):

  conv kernels [kh, kw, in, out]          ('conv_h', 'conv_w', 'conv_in', 'conv_out')
  dense kernels [in, out] (emb_noise, emb_label, emb_linear, logvar linear)
                                           ('embed_in', 'embed_out')
  scalar gains emb_gain, out_gain []       () (replicated)

There are no biases and no normalisation parameters.

Dtypes: parameters float32. Activations are computed in ``dtype`` (float32 or bfloat16), the
weights normalised in float32 then cast, norms computed in float32, the embedding path in
float32 (as the official, whose embedding follows the float32 c_noise), and the attention
logits / softmax in float32 (the official computes them in the activation dtype; equal in
float32). The output is returned in x's dtype.
"""
from jaxdiff.models.edm2.layers import (  # noqa: F401
    NORMALIZE_EPS, MP_SILU_DIVISOR, SIGMA_DATA, LOGVAR_CHANNELS, CONV_KERNEL_AXES,
    DENSE_KERNEL_AXES, GAIN_AXES, EDM2_LOGICAL_AXIS_NAMES, FLAVORS, RESAMPLE_MODES,
    EDM2_IMG64_PRESETS, EDM2_IMG64_TRAINING, normalize, normalize_weight, mp_silu, mp_sum,
    mp_cat, fourier_constants, MPFourier, MPConv, force_normalize)
from jaxdiff.models.edm2.model import (  # noqa: F401
    Block, EDM2UNet, EDM2LogVar, EDM2Denoiser, edm2_denoise, edm2_preset)
from jaxdiff.models.edm2.official import (  # noqa: F401
    params_from_official_state_dict, fourier_buffers_from_official_state_dict,
    unet_config_from_official_state_dict)

__all__ = [
    'EDM2_IMG64_PRESETS', 'EDM2_IMG64_TRAINING', 'EDM2_LOGICAL_AXIS_NAMES', 'Block',
    'EDM2Denoiser', 'EDM2LogVar', 'EDM2UNet', 'MPConv', 'MPFourier', 'edm2_denoise', 'edm2_preset',
    'force_normalize', 'fourier_buffers_from_official_state_dict', 'fourier_constants',
    'mp_cat', 'mp_silu', 'mp_sum', 'normalize', 'normalize_weight',
    'params_from_official_state_dict', 'unet_config_from_official_state_dict',
]
