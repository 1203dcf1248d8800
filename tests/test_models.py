"""Tests of jaxdiff.models: EDM SongUNet port (DDPM++ / NCSN++) and the toy MLP.

Most tests build parameters from ``jax.eval_shape`` shapes filled with numpy noise: a real
``init`` compiles one random-number kernel per parameter shape, which is slow on CPU and
would hide what the tests check (structure and forward behaviour).
"""
import functools
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdiff import models
from jaxdiff.models import layers
from jaxdiff.models.unet import SongUNet, UNetBlock

# EDM's PyTorch SongUNet(img_resolution=32, in/out_channels=3, augment_dim=9,
# model_channels=128, channel_mult=[2,2,2], num_blocks=4, attn_resolutions=[16]):
# sum(p.numel() for p in net.parameters()), counted with NVlabs/edm training/networks.py.
EDM_CIFAR10_DDPMPP_PARAMS = 55_733_891
EDM_CIFAR10_NCSNPP_PARAMS = 56_397_827   # same with --arch=ncsnpp (Fourier freqs are a buffer)


def _config(name='ddpmpp', **overrides):
  base = dict(name=name, model_channels=16, channel_mult=(1, 2), channel_mult_emb=4,
              num_blocks=1, attn_resolutions=(4,), dropout=0.0, label_dropout=0.0,
              augment_dim=0, dtype='float32', hidden_dim=32, num_layers=2)
  base.update(overrides)
  return ml_collections.ConfigDict(base)


def _param_shapes(model, *args, **kwargs):
  """Boxed parameter shapes, without running any initializer."""
  init = functools.partial(model.init, **kwargs)
  return jax.eval_shape(init, jax.random.key(0), *args)['params']


def _fake_params(model, *args, seed=0, **kwargs):
  """Random O(1)-output parameters: kernels ~ N(0, 1/fan_in), norms ~ 1, biases small.

  EDM's init scales the last layers by 1e-5, so an initialised network outputs ~0 and
  differences between calls would be tiny; trained-like weights make the checks sharp.
  """
  rng = np.random.RandomState(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'scale':
      return jnp.asarray(1.0 + 0.1 * rng.randn(*leaf.shape), jnp.float32)
    if name == 'bias':
      return jnp.asarray(0.1 * rng.randn(*leaf.shape), jnp.float32)
    fan_in = math.prod(leaf.shape[:-1])
    return jnp.asarray(rng.randn(*leaf.shape) / np.sqrt(fan_in), jnp.float32)

  shapes = nn.unbox(_param_shapes(model, *args, **kwargs))
  return jax.tree_util.tree_map_with_path(fill, shapes)


def _images(res, channels=3, batch=2, seed=1):
  return jnp.asarray(np.random.RandomState(seed).randn(batch, res, res, channels), jnp.float32)


def _differs(a, b, rel=1e-3):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return np.abs(a - b).max() > rel * np.abs(a).max()


# ---------------------------------------------------------------------------------------
# Parameter count against EDM.

@pytest.mark.parametrize('name,expected', [('ddpmpp', EDM_CIFAR10_DDPMPP_PARAMS),
                                           ('ncsnpp', EDM_CIFAR10_NCSNPP_PARAMS)])
def test_cifar10_param_count_equals_edm(name, expected):
  config = ml_collections.ConfigDict(dict(
      name=name, model_channels=128, channel_mult=(2, 2, 2), num_blocks=4,
      attn_resolutions=(16,), augment_dim=9, dropout=0.13))
  model = models.build_model(config, image_shape=(32, 32, 3))
  shapes = _param_shapes(model, jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,)))
  assert models.count_params(shapes) == expected


def test_class_labels_add_edm_label_layer():
  # EDM adds map_label: Linear(label_dim -> noise_channels) with bias.
  config = _config()
  x, sigma = jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,))
  uncond = models.count_params(_param_shapes(
      models.build_model(config, image_shape=(8, 8, 3)), x, sigma))
  cond = models.count_params(_param_shapes(
      models.build_model(config, image_shape=(8, 8, 3), num_classes=10), x, sigma))
  assert cond - uncond == 10 * 16 + 16


# ---------------------------------------------------------------------------------------
# Forward pass.

@pytest.mark.parametrize('name', ['ddpmpp', 'ncsnpp'])
def test_tiny_unet_forward(name):
  model = models.build_model(_config(name), image_shape=(8, 8, 3))
  x = _images(8)
  params = _fake_params(model, x, jnp.zeros((2,)))
  out = model.apply({'params': params}, x, jnp.array([-1.0, 0.5]))
  chex.assert_shape(out, x.shape)
  chex.assert_type(out, jnp.float32)
  chex.assert_tree_all_finite(out)
  assert _differs(out, 0 * out)


@pytest.mark.parametrize('name', ['ddpmpp', 'ncsnpp'])
@pytest.mark.parametrize('res,channel_mult', [(8, (1, 2)), (16, (1, 2)), (16, (1, 2, 2))])
def test_tiny_unet_output_shape(name, res, channel_mult):
  model = models.build_model(_config(name, channel_mult=channel_mult),
                             image_shape=(res, res, 3))
  x = jnp.zeros((2, res, res, 3))
  params = _param_shapes(model, x, jnp.zeros((2,)))
  out = jax.eval_shape(model.apply, {'params': params}, x, jnp.zeros((2,)))
  assert out.shape == x.shape and out.dtype == jnp.float32


def test_output_depends_on_noise_label():
  model = models.build_model(_config(), image_shape=(8, 8, 3))
  x = _images(8)
  params = _fake_params(model, x, jnp.zeros((2,)))
  out_a = model.apply({'params': params}, x, jnp.full((2,), -1.0))
  out_b = model.apply({'params': params}, x, jnp.full((2,), 1.0))
  assert _differs(out_a, out_b)
  # A scalar noise label is broadcast over the batch.
  chex.assert_trees_all_close(model.apply({'params': params}, x, -1.0), out_a)


def test_class_labels_change_output_and_none_means_zeros():
  model = models.build_model(_config(), image_shape=(8, 8, 3), num_classes=10)
  x, sigma = _images(8), jnp.zeros((2,))
  params = _fake_params(model, x, sigma)
  apply = functools.partial(model.apply, {'params': params}, x, sigma)
  out_3 = apply(jax.nn.one_hot(jnp.array([3, 3]), 10))
  out_7 = apply(jax.nn.one_hot(jnp.array([7, 7]), 10))
  assert _differs(out_3, out_7)
  # Integer labels are one-hot encoded; None means the all-zero (unconditional) label.
  chex.assert_trees_all_close(apply(jnp.array([3, 3])), out_3, atol=1e-6)
  chex.assert_trees_all_close(apply(None), apply(jnp.zeros((2, 10))), atol=1e-6)


def test_label_dropout_zeroes_labels_only_in_training():
  # label_dropout=1 drops every label: training output = unconditional output.
  model = SongUNet(3, label_dim=10, model_channels=16, channel_mult=(1, 2), num_blocks=1,
                   attn_resolutions=(4,), dropout=0.0, label_dropout=1.0)
  x, sigma = _images(8), jnp.zeros((2,))
  params = _fake_params(model, x, sigma)
  labels = jax.nn.one_hot(jnp.array([1, 2]), 10)
  rngs = {'dropout': jax.random.key(0)}
  dropped = model.apply({'params': params}, x, sigma, labels, train=True, rngs=rngs)
  uncond = model.apply({'params': params}, x, sigma, jnp.zeros((2, 10)))
  chex.assert_trees_all_close(dropped, uncond, atol=1e-6)
  assert _differs(model.apply({'params': params}, x, sigma, labels), uncond)


def test_augment_labels_condition_the_output():
  model = models.build_model(_config(augment_dim=9), image_shape=(8, 8, 3))
  x, sigma = _images(8), jnp.zeros((2,))
  params = _fake_params(model, x, sigma)
  aug = jnp.asarray(np.random.RandomState(2).randn(2, 9), jnp.float32)
  out = model.apply({'params': params}, x, sigma, augment_labels=aug)
  assert _differs(out, model.apply({'params': params}, x, sigma))
  # EDM skips the augment term when none is given; zeros are the same.
  chex.assert_trees_all_close(model.apply({'params': params}, x, sigma),
                              model.apply({'params': params}, x, sigma,
                                          augment_labels=jnp.zeros((2, 9))), atol=1e-6)


def test_dropout_only_with_train_flag():
  # One resolution level keeps the two compilations (train / eval) small.
  model = models.build_model(_config(dropout=0.5, model_channels=8, channel_mult=(1,)),
                             image_shape=(4, 4, 3))
  x, sigma = _images(4), jnp.zeros((2,))
  params = _fake_params(model, x, sigma)
  apply = jax.jit(lambda key, train: model.apply(
      {'params': params}, x, sigma, train=train, rngs={'dropout': key}), static_argnums=1)
  key_a, key_b = jax.random.key(1), jax.random.key(2)
  # Evaluation is deterministic and needs no rng.
  chex.assert_trees_all_close(apply(key_a, False), apply(key_b, False))
  # Training draws masks from the 'dropout' stream: key-dependent, reproducible.
  assert _differs(apply(key_a, True), apply(key_b, True))
  assert _differs(apply(key_a, True), apply(key_a, False))
  chex.assert_trees_all_equal(apply(key_a, True), apply(key_a, True))


def test_bfloat16_compute_keeps_float32_params_and_returns_input_dtype():
  small = dict(model_channels=8, channel_mult=(1,))
  model = models.build_model(_config(dtype='bfloat16', **small), image_shape=(4, 4, 3))
  reference = models.build_model(_config(**small), image_shape=(4, 4, 3))
  x, sigma = _images(4), jnp.full((2,), 0.3)
  shapes = nn.unbox(_param_shapes(model, x, sigma))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes))
  params = _fake_params(model, x, sigma)
  out = jax.jit(model.apply)({'params': params}, x, sigma)
  chex.assert_type(out, jnp.float32)   # Output in x's dtype, computed in bfloat16.
  expected = jax.jit(reference.apply)({'params': params}, x, sigma)
  rel = np.abs(np.asarray(out) - np.asarray(expected)).max() / np.abs(expected).max()
  assert 1e-5 < rel < 0.1, rel   # bfloat16 rounding: visible, but small.
  bf16_out = jax.eval_shape(model.apply, {'params': params}, x.astype(jnp.bfloat16), sigma)
  assert bf16_out.dtype == jnp.bfloat16


# ---------------------------------------------------------------------------------------
# Logical partitioning.

@pytest.mark.parametrize('name', ['ddpmpp', 'ncsnpp', 'mlp'])
def test_every_parameter_has_logical_axis_names(name):
  shape = (2,) if name == 'mlp' else (8, 8, 3)
  model = models.build_model(_config(name, augment_dim=9), image_shape=shape, num_classes=10)
  boxed = _param_shapes(model, jnp.zeros((1,) + shape), jnp.zeros((1,)))
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(leaf, nn.Partitioned) for leaf in leaves)
  kinds = set()
  for path, leaf in jax.tree_util.tree_flatten_with_path(
      boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]:
    names = leaf.names
    assert len(names) == leaf.value.ndim, (path, names)
    assert set(names) <= set(layers.LOGICAL_AXIS_NAMES), (path, names)
    if path[-1].key == 'kernel':
      assert names in (layers.CONV_KERNEL_AXES, layers.DENSE_KERNEL_AXES), (path, names)
    kinds.add(names)
  expected = {layers.DENSE_KERNEL_AXES, layers.DENSE_BIAS_AXES}
  if name != 'mlp':
    expected |= {layers.CONV_KERNEL_AXES, layers.CONV_BIAS_AXES, layers.NORM_AXES}
  assert kinds == expected
  # The names turn into mesh axes through a rules table; unnamed axes are replicated.
  specs = nn.logical_to_mesh(nn.get_partition_spec(boxed), [('conv_out', 'fsdp'),
                                                           ('embed_out', 'fsdp')])
  spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert any('fsdp' in tuple(s) for s in spec_leaves)


# ---------------------------------------------------------------------------------------
# Layers against independent definitions.

def _transposed_conv_reference(x, kernel, stride, padding):
  """conv_transpose2d of one NHWC channel-wise filter, by its scatter definition."""
  b, h, w, c = x.shape
  k = kernel.shape[0]
  full = np.zeros((b, (h - 1) * stride + k, (w - 1) * stride + k, c))
  for i in range(h):
    for j in range(w):
      full[:, i * stride:i * stride + k, j * stride:j * stride + k, :] += (
          x[:, i, j, None, None, :] * kernel[None, :, :, None])
  out_h = (h - 1) * stride - 2 * padding + k
  return full[:, padding:padding + out_h, padding:padding + out_h, :]


def _strided_conv_reference(x, kernel, stride, padding):
  xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  k = kernel.shape[0]
  out = (xp.shape[1] - k) // stride + 1
  y = np.zeros((x.shape[0], out, out, x.shape[3]))
  for i in range(out):
    for j in range(out):
      patch = xp[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
      y[:, i, j, :] = np.einsum('bhwc,hw->bc', patch, kernel)
  return y


@pytest.mark.parametrize('resample_filter', [(1, 1), (1, 3, 3, 1)])
def test_fir_resampling_matches_edm_definition(resample_filter):
  x = np.random.RandomState(0).randn(2, 8, 8, 3)
  f = np.asarray(resample_filter, np.float64)
  filt = np.outer(f, f) / f.sum() ** 2
  pad = (len(f) - 1) // 2
  up = layers.fir_upsample(jnp.asarray(x, jnp.float32), resample_filter, pad)
  down = layers.fir_downsample(jnp.asarray(x, jnp.float32), resample_filter, pad)
  np.testing.assert_allclose(up, _transposed_conv_reference(x, 4 * filt, 2, pad), atol=1e-5)
  np.testing.assert_allclose(down, _strided_conv_reference(x, filt, 2, pad), atol=1e-5)
  assert up.shape == (2, 16, 16, 3) and down.shape == (2, 4, 4, 3)


def test_fused_downsampling_conv_is_conv_then_filter():
  # NCSN++'s residual encoder: conv at padding w_pad+f_pad, then the FIR filter, stride 2.
  conv = layers.Conv2d(4, 3, down=True, fused_resample=True, resample_filter=(1, 3, 3, 1))
  x = np.random.RandomState(0).randn(1, 8, 8, 2).astype(np.float32)
  params = _fake_params(conv, jnp.asarray(x))
  out = conv.apply({'params': params}, jnp.asarray(x))
  kernel, bias = np.asarray(params['kernel'], np.float64), np.asarray(params['bias'])
  xp = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
  convolved = np.zeros((1, 10, 10, 4))
  for i in range(10):
    for j in range(10):
      convolved[:, i, j] = np.einsum('bhwi,hwio->bo', xp[:, i:i + 3, j:j + 3], kernel)
  f = np.array([1, 3, 3, 1.0])
  expected = _strided_conv_reference(convolved, np.outer(f, f) / 64, 2, 0) + bias
  np.testing.assert_allclose(out, expected, atol=1e-4)
  assert out.shape == (1, 4, 4, 4)


@pytest.mark.parametrize('channels,groups', [(16, 4), (48, 12), (256, 32)])
def test_group_norm_uses_edm_group_rule(channels, groups):
  x = np.random.RandomState(0).randn(2, 3, 3, channels) * 3 + 1
  norm = layers.GroupNorm()
  params = {'params': {'scale': jnp.ones(channels), 'bias': jnp.zeros(channels)}}
  out = np.asarray(jax.jit(norm.apply)(params, jnp.asarray(x, jnp.float32)))
  xg = x.reshape(2, 3, 3, groups, channels // groups)
  mean = xg.mean(axis=(1, 2, 4), keepdims=True)
  var = xg.var(axis=(1, 2, 4), keepdims=True)
  expected = ((xg - mean) / np.sqrt(var + 1e-6)).reshape(x.shape)
  np.testing.assert_allclose(out, expected, atol=1e-4)


def test_positional_embedding_is_edm_with_sin_cos_swapped():
  emb = layers.PositionalEmbedding(8, endpoint=True).apply({}, jnp.array([0.0, 2.0]))
  freqs = (1 / 10000) ** (np.arange(4) / 3)    # endpoint: the last frequency is 1/10000
  x = np.array([0.0, 2.0])[:, None] * freqs
  np.testing.assert_allclose(emb, np.concatenate([np.sin(x), np.cos(x)], 1), atol=1e-6)


def test_fourier_embedding_is_fixed_and_not_a_parameter():
  module = layers.FourierEmbedding(8)
  variables = module.init(jax.random.key(0), jnp.zeros((1,)))
  assert not jax.tree.leaves(variables)
  a = module.apply({}, jnp.array([0.25]))
  b = layers.FourierEmbedding(8).apply({}, jnp.array([0.25]))
  chex.assert_trees_all_equal(a, b)
  assert _differs(a, layers.FourierEmbedding(8, seed=1).apply({}, jnp.array([0.25])))


def test_fourier_scale_reaches_the_ncsnpp_embedding():
  """model.fourier_scale (iCT: 0.02) scales the frequencies; 16 (EDM, CT) is the default."""
  x = jnp.array([0.25, -1.0])
  base = np.random.RandomState(0).standard_normal(4)
  for scale in (16.0, 0.02):
    got = layers.noise_embedding('fourier', 8, scale).apply({}, x)
    arg = np.asarray(x)[:, None] * (2 * np.pi * scale * base)[None, :]
    np.testing.assert_allclose(got, np.concatenate([np.sin(arg), np.cos(arg)], 1), atol=2e-5)
  config = ml_collections.ConfigDict(dict(name='ncsnpp', model_channels=8, channel_mult=(1,),
                                          num_blocks=1, attn_resolutions=(), fourier_scale=0.02))
  assert models.build_model(config, image_shape=(8, 8, 3)).fourier_scale == 0.02
  config.fourier_scale = 16.0
  assert models.build_model(config, image_shape=(8, 8, 3)) == models.build_model(
      ml_collections.ConfigDict({k: v for k, v in config.items() if k != 'fourier_scale'}),
      image_shape=(8, 8, 3))


# ---------------------------------------------------------------------------------------
# Initialisation.

@pytest.mark.parametrize('mode', layers.INIT_MODES)
def test_edm_weight_init_distributions(mode):
  shape = (3, 3, 64, 32)
  w = np.asarray(layers.edm_weight_init(mode, 0.5)(jax.random.key(0), shape))
  fan_in, fan_out = 9 * 64, 9 * 32
  std = {'xavier_uniform': np.sqrt(2 / (fan_in + fan_out)),
         'xavier_normal': np.sqrt(2 / (fan_in + fan_out)),
         'kaiming_uniform': np.sqrt(1 / fan_in),
         'kaiming_normal': np.sqrt(1 / fan_in)}[mode] * 0.5
  np.testing.assert_allclose(w.std(), std, rtol=0.05)
  if mode.endswith('uniform'):
    assert np.abs(w).max() <= np.sqrt(3) * std * (1 + 1e-6)


def test_unet_block_init_follows_edm():
  block = UNetBlock(32, attention=True, resample_filter=(1, 1))
  x, emb = jnp.zeros((1, 4, 4, 16)), jnp.zeros((1, 64))
  # The 'rbg' key only makes the random kernels cheaper to compile on CPU.
  params = nn.unbox(jax.jit(block.init)(jax.random.key(0, impl='rbg'), x, emb))['params']
  limit = lambda w: np.sqrt(6 / (math.prod(w.shape[:-2]) * (w.shape[-2] + w.shape[-1])))
  for path, scale in [(('conv0',), 1.0), (('skip',), 1.0), (('affine',), 1.0),
                      (('conv1',), 1e-5), (('attn', 'proj'), 1e-5),
                      (('attn', 'qkv'), np.sqrt(0.2))]:
    w = np.asarray(functools.reduce(lambda d, k: d[k], path, params)['kernel'])
    bound = scale * limit(w)
    assert np.abs(w).max() <= bound * (1 + 1e-5), path
    assert np.abs(w).max() > 0.9 * bound, path    # uniform over the whole interval
    np.testing.assert_array_equal(
        functools.reduce(lambda d, k: d[k], path, params)['bias'], 0.0)
  for norm in (params['norm0'], params['norm1'], params['attn']['norm2']):
    np.testing.assert_array_equal(norm['scale'], 1.0)
    np.testing.assert_array_equal(norm['bias'], 0.0)


# ---------------------------------------------------------------------------------------
# MLP.

def test_mlp_shapes_labels_and_dropout():
  model = models.build_model(_config('mlp', dropout=0.3), image_shape=(2,), num_classes=3)
  x = jnp.asarray(np.random.RandomState(0).randn(5, 2), jnp.float32)
  sigma = jnp.linspace(-1.0, 1.0, 5)
  params = _fake_params(model, x, sigma)
  assert models.count_params(params) == models.count_params(
      _param_shapes(model, x, sigma))
  out = model.apply({'params': params}, x, sigma, jnp.array([0, 1, 2, 0, 1]))
  chex.assert_shape(out, (5, 2))
  chex.assert_type(out, jnp.float32)
  assert _differs(out, model.apply({'params': params}, x, sigma, jnp.array([2, 2, 2, 2, 2])))
  assert _differs(out, model.apply({'params': params}, x, -sigma, jnp.array([0, 1, 2, 0, 1])))
  train = lambda k: model.apply({'params': params}, x, sigma, jnp.array([0, 1, 2, 0, 1]),
                                train=True, rngs={'dropout': jax.random.key(k)})
  assert _differs(train(0), train(1))
  with pytest.raises(ValueError, match=r'\[batch, 2\]'):
    model.apply({'params': params}, jnp.zeros((5, 3)), sigma)


def test_mlp_output_layer_starts_near_zero():
  model = models.build_model(_config('mlp'), image_shape=(2,))
  x = jnp.ones((4, 2))
  variables = jax.jit(model.init)(jax.random.key(0, impl='rbg'), x, jnp.zeros((4,)))
  out = model.apply(variables, x, jnp.zeros((4,)))
  assert np.abs(np.asarray(out)).max() < 1e-3


# ---------------------------------------------------------------------------------------
# Configuration errors.

@pytest.mark.parametrize('overrides,shape,match', [
    (dict(name='unet'), (8, 8, 3), r"model.name='unet' is not one of \('ddpmpp', 'ncsnpp', 'mlp', 'dit', 'edm2', 'adm'\)"),
    (dict(channel_mult=(1, 2, 2)), (10, 10, 3), r'resolution 10 is not divisible by .* = 4'),
    (dict(dtype='float16'), (8, 8, 3), r"model.dtype='float16' is not one of \('float32', 'bfloat16'\)"),
    (dict(dropout=1.0), (8, 8, 3), r'model.dropout=1.0 must be in \[0, 1\)'),
    (dict(), (8, 16, 3), r'square image shape'),
    (dict(name='mlp'), (8, 8, 3), r'needs a data shape \(D,\)'),
])
def test_bad_config_raises_clear_error(overrides, shape, match):
  with pytest.raises(ValueError, match=match):
    models.build_model(_config(**overrides), image_shape=shape)


def test_model_names_are_exported():
  assert models.MODEL_NAMES == ('ddpmpp', 'ncsnpp', 'mlp', 'dit', 'edm2', 'adm')
  for name in models.MODEL_NAMES:
    shape = (2,) if name == 'mlp' else (8, 8, 3)
    assert isinstance(models.build_model(_config(name), image_shape=shape), nn.Module)
