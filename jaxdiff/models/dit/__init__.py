"""DiT: Diffusion Transformer with adaLN-Zero conditioning, in Flax Linen, NHWC.

Peebles & Xie 2023, "Scalable Diffusion Models with Transformers" (arXiv 2212.09748),
official code ``facebookresearch/DiT`` ``models.py`` (which takes ``PatchEmbed``,
``Attention`` and ``Mlp`` from timm). This is an independent re-implementation with the same
layers, order, initialisation and (trainable) parameter count; a PyTorch state dict maps onto
it with ``params_from_official_state_dict``.

Network::

  x [B, H, W, C] --patchify (conv, kernel = stride = p)--> tokens [B, T, D], T = HW / p^2
  tokens += fixed 2-D sin-cos positional embedding (a constant here, see below)
  c = TimestepEmbedder(t) + LabelEmbedder(y)            (+ augment embedding, if enabled)
  depth x DiTBlock(tokens, c):  adaLN-Zero, 6 modulation vectors from Linear(SiLU(c))
      x += gate_msa * Attn(modulate(LN(x), shift_msa, scale_msa))
      x += gate_mlp * MLP(modulate(LN(x), shift_mlp, scale_mlp))
  FinalLayer: modulate(LN(x), shift, scale) -> Linear(D, p*p*out_channels)
  unpatchify -> [B, H, W, out_channels]

with ``modulate(x, shift, scale) = x * (1 + scale) + shift``, LayerNorm without affine
(eps 1e-6), attention with qkv bias, MLP ratio 4 with tanh-approximated GELU.

Output layout (NHWC). ``out_channels = 2 C`` with ``learn_sigma`` (the official default):
channels ``[:C]`` are the eps prediction and ``[C:]`` the variance interpolation v of
Nichol & Dhariwal (log-variance = v log beta_t + (1 - v) log beta~_t, with v in the model's
raw output range); ``out_channels = C`` otherwise. jaxdiff's objectives
(``jaxdiff.diffusion.precond.denoise``, flow) need an output shaped like x: use
``learn_sigma=False``, or ``learn_sigma=True, return_sigma=False`` (SiT's model: the v head
is built, and counted, but its channels are dropped from the output).

Conditioning. ``noise_labels`` are DiT's timesteps t (any float; the official training feeds
integers 0..999), embedded with the GLIDE sinusoidal embedding ([cos, sin], dim 256,
max_period 10000) then Linear-SiLU-Linear. ``class_labels`` are integer [B] (the value
``num_classes`` selects the null class directly, as the official code does internally) or
float [B, num_classes] (one-hot; the embedding is ``labels @ table[:num_classes]``, and an
all-zero row, jaxdiff's "no label", selects the null class). ``None`` selects the null class
for every sample. The label table has ``num_classes + 1`` rows when ``null_class`` (default:
iff ``class_dropout_prob > 0``, as official); in training, labels are replaced by the null
class with probability ``class_dropout_prob`` (rng 'dropout'); ``force_drop_ids`` (int/bool
[B], 1 = drop) overrides the random drop, in training or not, as official.
``num_classes=0`` builds an unconditional DiT without a label embedder (jaxdiff extension).

Positional embedding. The official ``pos_embed`` is an ``nn.Parameter`` with
``requires_grad=False``, filled from ``get_2d_sincos_pos_embed``; it is therefore counted by
``sum(p.numel() for p in model.parameters())`` (DiT-XL/2: 675,129,632 including the
294,912 pos_embed entries). Here it is a constant computed from the token grid, so it is not a
parameter: our count equals the official count minus ``T * D`` (= the official trainable
count). The first half of its channels encodes the column index, the second half the row
index (as MAE/DiT's meshgrid with "w first" does); rectangular grids are supported.

Logical axis names (``nn.with_logical_partitioning``; see ``DIT_LOGICAL_AXIS_NAMES``):

  patch embedding kernel [p, p, C, D]      ('conv_h', 'conv_w', 'conv_in', 'conv_out')
  patch embedding bias [D]                  ('conv_out',)
  dense kernels [in, out] (t-MLP, adaLN, final linear, augment)  ('embed_in', 'embed_out')
  dense biases [out]                        ('embed_out',)
  label table [K (+1), D]                   ('classes', 'embed_out')
  qkv kernel [D, 3, heads, head_dim]        ('embed_in', 'qkv', 'heads', 'head_dim')
  qkv bias [3, heads, head_dim]             ('qkv', 'heads', 'head_dim')
  attention out kernel [heads, head_dim, D] ('heads', 'head_dim', 'embed_out')
  MLP fc1 kernel [D, 4D] / bias [4D]        ('embed_in', 'mlp') / ('mlp',)
  MLP fc2 kernel [4D, D] / bias [D]         ('mlp', 'embed_out') / ('embed_out',)

The qkv and output kernels keep heads as their own axis so a tensor-parallel rule
('heads' -> model axis, 'mlp' -> model axis) splits attention per head and the MLP
Megatron-style; 'embed_in' / 'embed_out' serve FSDP. New names, not in
``layers.LOGICAL_AXIS_NAMES``: ``DIT_NEW_LOGICAL_AXIS_NAMES``.

Dtypes: parameters float32; activations in ``dtype`` (float32 / bfloat16) with LayerNorm,
the timestep frequencies and the attention softmax in float32. Output in x's dtype.
"""
from jaxdiff.models.dit.components import (  # noqa: F401
    ATTN_OUT_KERNEL_AXES,
    DENSE_BIAS_AXES,
    DENSE_KERNEL_AXES,
    DIT_LOGICAL_AXIS_NAMES,
    DIT_NEW_LOGICAL_AXIS_NAMES,
    DIT_PRESETS,
    LABEL_INIT_STD,
    LABEL_TABLE_AXES,
    LN_EPS,
    MLP_IN_BIAS_AXES,
    MLP_IN_KERNEL_AXES,
    MLP_OUT_KERNEL_AXES,
    PATCH_BIAS_AXES,
    PATCH_KERNEL_AXES,
    QKV_BIAS_AXES,
    QKV_KERNEL_AXES,
    TIMESTEP_INIT_STD,
    Attention,
    LabelEmbedder,
    Linear,
    Mlp,
    PatchEmbed,
    TimestepEmbedder,
    get_2d_sincos_pos_embed,
    layer_norm,
    modulate,
    timestep_embedding,
)
from jaxdiff.models.dit.model import (  # noqa: F401
    DiT,
    DiTBlock,
    FinalLayer,
    dit_cfg_output,
    dit_preset,
    unpatchify,
)
from jaxdiff.models.dit.official import params_from_official_state_dict  # noqa: F401

__all__ = ['DiT', 'DiTBlock', 'FinalLayer', 'Attention', 'Mlp', 'PatchEmbed',
           'TimestepEmbedder', 'LabelEmbedder', 'Linear', 'DIT_PRESETS',
           'DIT_LOGICAL_AXIS_NAMES', 'DIT_NEW_LOGICAL_AXIS_NAMES', 'dit_preset',
           'dit_cfg_output', 'params_from_official_state_dict', 'get_2d_sincos_pos_embed',
           'timestep_embedding', 'modulate', 'layer_norm', 'unpatchify']
