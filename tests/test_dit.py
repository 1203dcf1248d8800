"""Tests of jaxdiff.models.dit: the DiT backbone (Peebles & Xie 2023) against the official
facebookresearch/DiT models.py.

Goldens: tests/goldens/dit_*.npz hold an official DiT's state dict (torch key names, float32,
weights redrawn to O(1) outputs), inputs and the official outputs (NHWC); regenerate with
tests/goldens/make_dit_goldens.py. Parameter counts use jax.eval_shape (no compute).
"""
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.models import count_params, dit, layers

GOLDENS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'goldens')
# Our float32 forward against the official float32 (PyTorch CPU) forward:
# max |ours - official| <= GOLDEN_RTOL * max |official| (measured: ~2e-6 relative).
GOLDEN_RTOL = 2e-5

# sum(p.numel() for p in model.parameters()) of the official models.py DiT_models[name](
# input_size=32, num_classes=1000) (256 px images, 32x32x4 latents; learn_sigma=True,
# class_dropout_prob=0.1 defaults), and the numel of its frozen pos_embed parameter, which
# that count includes; jaxdiff computes pos_embed as a constant. Counted with
# tests/goldens/make_dit_goldens.py --counts (timm 1.0.31, torch 2.13).
OFFICIAL_PARAMS = {
    'DiT-XL/2': (675_129_632, 294_912),
    'DiT-XL/4': (675_074_432, 73_728),
    'DiT-XL/8': (675_683_072, 18_432),
    'DiT-L/2': (458_102_816, 262_144),
    'DiT-L/4': (458_053_760, 65_536),
    'DiT-L/8': (458_594_816, 16_384),
    'DiT-B/2': (130_512_416, 196_608),
    'DiT-B/4': (130_475_648, 49_152),
    'DiT-B/8': (130_881_536, 12_288),
    'DiT-S/2': (32_963_360, 98_304),
    'DiT-S/4': (32_945_024, 24_576),
    'DiT-S/8': (33_148_160, 6_144),
}


def _param_shapes(model, *args, **kwargs):
  init = functools.partial(model.init, **kwargs)
  return jax.eval_shape(init, jax.random.key(0), *args)['params']


@functools.lru_cache(maxsize=None)
def _golden(name):
  with np.load(os.path.join(GOLDENS, name + '.npz')) as g:
    data = {k: g[k] for k in g.files}
  cfg = dict(zip(data['config_keys'].tolist(), data['config_values'].tolist()))
  model = dit.DiT(patch_size=int(cfg['patch_size']), hidden_size=int(cfg['hidden_size']),
                  depth=int(cfg['depth']), num_heads=int(cfg['num_heads']),
                  num_classes=int(cfg['num_classes']),
                  class_dropout_prob=float(cfg['class_dropout_prob']),
                  learn_sigma=bool(cfg['learn_sigma']))
  state_dict = {k[len('sd/'):]: v for k, v in data.items() if k.startswith('sd/')}
  params = dit.params_from_official_state_dict(state_dict, num_heads=int(cfg['num_heads']))
  return model, params, data


def _assert_close(out, ref):
  out, ref = np.asarray(out), np.asarray(ref)
  assert out.shape == ref.shape, (out.shape, ref.shape)
  err = np.abs(out - ref).max()
  assert err <= GOLDEN_RTOL * np.abs(ref).max(), (err, np.abs(ref).max())


# ---------------------------------------------------------------------------------------
# Presets and parameter counts.

def test_presets_are_the_official_configs():
  assert list(dit.DIT_PRESETS) == list(OFFICIAL_PARAMS)
  assert dit.DIT_PRESETS['DiT-XL/2'] == dict(depth=28, hidden_size=1152, num_heads=16,
                                             patch_size=2)
  assert dit.DIT_PRESETS['DiT-S/8'] == dict(depth=12, hidden_size=384, num_heads=6,
                                            patch_size=8)
  with pytest.raises(ValueError, match='DiT-XXL/2'):
    dit.dit_preset('DiT-XXL/2')


def test_return_sigma_false_drops_the_v_channels():
  model, params, g = _golden('dit_tiny')   # learn_sigma=True
  sit = model.clone(return_sigma=False)
  out = jax.jit(sit.apply)({'params': params}, g['x'], g['t'], g['y'])
  assert out.shape == g['x'].shape
  _assert_close(out, g['out'][..., :4])
  shapes = _param_shapes(sit, g['x'], g['t'], g['y'])
  assert count_params(shapes) == count_params(params)


@pytest.mark.parametrize('name', list(OFFICIAL_PARAMS))
def test_param_count_equals_official(name):
  total, pos_embed = OFFICIAL_PARAMS[name]
  model = dit.dit_preset(name, num_classes=1000, learn_sigma=True)
  shapes = _param_shapes(model, jax.ShapeDtypeStruct((1, 32, 32, 4), jnp.float32),
                         jax.ShapeDtypeStruct((1,), jnp.float32),
                         jax.ShapeDtypeStruct((1,), jnp.int32))
  # The official count includes the frozen pos_embed parameter; ours computes it.
  assert count_params(shapes) == total - pos_embed
  assert pos_embed == (32 // model.patch_size) ** 2 * model.hidden_size


# ---------------------------------------------------------------------------------------
# Goldens from the official code.

@pytest.mark.parametrize('name', ['dit_tiny', 'dit_p4'])
def test_forward_matches_official(name):
  model, params, g = _golden(name)
  shapes = _param_shapes(model, g['x'], g['t'], g['y'])
  assert (jax.tree.map(lambda a: a.shape, nn.unbox(shapes))
          == jax.tree.map(np.shape, params))
  out = jax.jit(model.apply)({'params': params}, g['x'], g['t'], g['y'])
  channels = g['x'].shape[-1] * (2 if model.learn_sigma else 1)
  assert out.shape == g['x'].shape[:3] + (channels,)
  _assert_close(out, g['out'])


def test_cfg_matches_official_forward_with_cfg():
  model, params, g = _golden('dit_tiny')
  scale = float(g['cfg_scale'])
  apply = jax.jit(model.apply)
  out = dit.dit_cfg_output(apply, params, g['x'], g['t'], g['y'], scale)
  _assert_close(out, g['out_cfg'])   # the official quirk: only channels [:3] guided

  # guided_channels=None: all eps channels [:C] guided, v [C:] from the conditional branch.
  out_all = dit.dit_cfg_output(apply, params, g['x'], g['t'], g['y'], scale,
                               guided_channels=None)
  cond = apply({'params': params}, g['x'], g['t'], g['y'])
  uncond = apply({'params': params}, g['x'], g['t'], None)
  c = g['x'].shape[-1]
  np.testing.assert_allclose(out_all[..., :c],
                             uncond[..., :c] + scale * (cond[..., :c] - uncond[..., :c]),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out_all[..., c:], cond[..., c:], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out_all[..., :3], out[..., :3], rtol=1e-5, atol=1e-6)
  assert np.abs(out_all[..., 3] - out[..., 3]).max() > 1e-3


def test_state_dict_mapping_rejects_unknown_keys_and_bad_pos_embed():
  _, _, g = _golden('dit_p4')
  sd = {k[len('sd/'):]: v for k, v in g.items() if k.startswith('sd/')}
  with pytest.raises(ValueError, match='not mapped'):
    dit.params_from_official_state_dict({**sd, 'extra.weight': np.zeros(3)}, num_heads=2)
  flipped = dict(sd, pos_embed=sd['pos_embed'][:, ::-1])
  with pytest.raises(ValueError, match='pos_embed'):
    dit.params_from_official_state_dict(flipped, num_heads=2)
  prefixed = {'module.' + k: v for k, v in sd.items()}   # DDP checkpoints
  a = dit.params_from_official_state_dict(prefixed, num_heads=2)
  b = dit.params_from_official_state_dict(sd, num_heads=2)
  assert jax.tree.all(jax.tree.map(np.array_equal, a, b))


# ---------------------------------------------------------------------------------------
# Initialisation (adaLN-Zero).

def test_init_is_official_and_output_exactly_zero():
  model = dit.DiT(patch_size=2, hidden_size=64, depth=2, num_heads=4, num_classes=10)
  x = jnp.asarray(np.random.RandomState(0).randn(2, 8, 8, 4), jnp.float32)
  t, y = jnp.asarray([10.0, 500.0]), jnp.asarray([1, 7])
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), x, t, y)['params'])
  out = jax.jit(model.apply)({'params': params}, x, t, y)
  assert out.shape == (2, 8, 8, 8)
  assert np.all(np.asarray(out) == 0.0)   # zero final layer (adaLN-Zero)

  d = 64
  for i in range(2):
    block = params[f'blocks_{i}']
    assert not np.any(block['adaLN_modulation']['kernel'])
    assert not np.any(block['adaLN_modulation']['bias'])
    qkv = np.asarray(block['attn']['qkv']['kernel'])
    limit = np.sqrt(6 / (d + 3 * d))   # xavier_uniform_ of the [3D, D] torch weight
    assert np.abs(qkv).max() <= limit and np.abs(qkv).max() > 0.9 * limit
    fc1 = np.asarray(block['mlp']['fc1']['kernel'])
    assert np.abs(fc1).max() <= np.sqrt(6 / (d + 4 * d))
    assert not np.any(block['mlp']['fc1']['bias'])
  for name in ('adaLN_modulation', 'linear'):
    assert not np.any(params['final_layer'][name]['kernel'])
    assert not np.any(params['final_layer'][name]['bias'])
  patch = np.asarray(params['x_embedder']['kernel'])   # xavier on the [D, C p p] view
  assert patch.shape == (2, 2, 4, d)
  assert np.abs(patch).max() <= np.sqrt(6 / (4 * 4 + d))
  assert np.abs(patch).max() > 0.9 * np.sqrt(6 / (4 * 4 + d))
  table = np.asarray(params['y_embedder']['embedding_table'])
  assert table.shape == (11, d)   # 10 classes + the null class
  assert abs(table.std() - 0.02) < 0.003
  for name in ('mlp_0', 'mlp_2'):
    assert abs(np.asarray(params['t_embedder'][name]['kernel']).std() - 0.02) < 0.002


# ---------------------------------------------------------------------------------------
# Labels: formats, the null class, dropout.

def test_label_formats_and_null_class():
  model, params, g = _golden('dit_tiny')
  x, t, y = g['x'], g['t'], np.asarray([0, 3, 9, 5])
  apply = jax.jit(model.apply)
  out_int = apply({'params': params}, x, t, y)
  one_hot = jax.nn.one_hot(y, 10)
  np.testing.assert_allclose(apply({'params': params}, x, t, one_hot), out_int,
                             rtol=1e-5, atol=1e-6)
  out_null = apply({'params': params}, x, t, None)
  np.testing.assert_allclose(apply({'params': params}, x, t, np.full(4, 10)), out_null,
                             rtol=1e-5, atol=1e-6)
  # jaxdiff's "no label" (an all-zero one-hot row) is the null class.
  zero_row = one_hot.at[1].set(0.0)
  mixed = apply({'params': params}, x, t, zero_row)
  np.testing.assert_allclose(mixed[1], out_null[1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mixed[0], out_int[0], rtol=1e-5, atol=1e-6)
  # force_drop_ids drops to the null class, in eval mode too (as official).
  forced = apply({'params': params}, x, t, y, force_drop_ids=np.asarray([1, 0, 1, 0]))
  np.testing.assert_allclose(forced[0], out_null[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(forced[1], out_int[1], rtol=1e-5, atol=1e-6)
  # A scalar noise label is broadcast.
  assert jax.eval_shape(model.apply, {'params': params}, x, 5.0, y).shape == out_int.shape


def _label_embedder(dropout_prob, null_class=True, classes=10, dim=8):
  emb = dit.LabelEmbedder(classes, dim, dropout_prob, null_class)
  table = np.random.RandomState(0).randn(classes + int(null_class), dim).astype(np.float32)
  return emb, {'params': {'embedding_table': table}}, table


def test_label_dropout_probability_and_force_drop():
  emb, variables, table = _label_embedder(0.1)
  batch = 20_000
  labels = jnp.asarray(np.random.RandomState(1).randint(0, 10, batch))
  run = jax.jit(functools.partial(emb.apply, batch=batch), static_argnames='train')
  out = np.asarray(run(variables, labels, train=True, rngs={'dropout': jax.random.key(3)}))
  dropped = np.all(out == table[10], axis=-1)
  kept = np.all(out == table[np.asarray(labels)], axis=-1)
  assert np.all(dropped | kept)
  assert 0.09 < dropped.mean() < 0.11, dropped.mean()   # p = 0.1, 5 sigma = 0.011
  # No dropout outside training; forced drops override the random ones in training.
  assert not np.any(np.all(np.asarray(run(variables, labels, train=False)) == table[10], -1))
  force = np.arange(batch) % 4 == 0
  out = np.asarray(run(variables, labels, train=True, force_drop_ids=force.astype(np.int32)))
  np.testing.assert_array_equal(np.all(out == table[10], axis=-1), force)
  # Other keys drop other samples.
  out2 = np.asarray(run(variables, labels, train=True, rngs={'dropout': jax.random.key(4)}))
  assert np.any(np.all(out2 == table[10], -1) != dropped)


def test_without_null_class():
  # class_dropout_prob=0: no null row (official); None / dropping cannot be embedded.
  emb, variables, table = _label_embedder(0.0, null_class=False)
  labels = jnp.asarray([1, 2])
  np.testing.assert_array_equal(emb.apply(variables, labels, batch=2, train=True),
                                table[[1, 2]])
  with pytest.raises(ValueError, match='null class'):
    emb.apply(variables, None, batch=2)
  with pytest.raises(ValueError, match='null class'):
    emb.apply(variables, labels, batch=2, force_drop_ids=jnp.asarray([1, 0]))
  model = dit.DiT(patch_size=2, hidden_size=32, depth=1, num_heads=2, num_classes=10,
                  class_dropout_prob=0.0)
  x = jnp.zeros((1, 4, 4, 4))
  shapes = nn.unbox(_param_shapes(model, x, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)))
  assert shapes['y_embedder']['embedding_table'].shape == (10, 32)
  keep = dit.DiT(patch_size=2, hidden_size=32, depth=1, num_heads=2, num_classes=10,
                 class_dropout_prob=0.0, null_class=True)
  shapes = nn.unbox(_param_shapes(keep, x, jnp.zeros((1,)), None))
  assert shapes['y_embedder']['embedding_table'].shape == (11, 32)
  uncond = dit.DiT(patch_size=2, hidden_size=32, depth=1, num_heads=2, num_classes=0)
  assert 'y_embedder' not in _param_shapes(uncond, x, jnp.zeros((1,)))


# ---------------------------------------------------------------------------------------
# Layers, axes, options.

def test_pos_embed_matches_official_and_rectangular_grids():
  _, _, g = _golden('dit_tiny')
  np.testing.assert_allclose(dit.get_2d_sincos_pos_embed(32, 4), g['sd/pos_embed'][0],
                             rtol=0, atol=1e-7)
  pos = dit.get_2d_sincos_pos_embed(16, 3, 5).reshape(3, 5, 16)
  # First half: the column index only; second half: the row index only.
  assert np.all(pos[:, :, :8] == pos[:1, :, :8]) and np.all(pos[:, :, 8:] == pos[:, :1, 8:])
  np.testing.assert_array_equal(pos[:, :, :8], dit.get_2d_sincos_pos_embed(16, 5)
                                .reshape(5, 5, 16)[:3, :, :8])


def test_timestep_embedding():
  emb = np.asarray(dit.timestep_embedding(jnp.asarray([0.0, 2.0]), 6))
  freqs = np.exp(-np.log(10000.0) * np.arange(3) / 3)
  np.testing.assert_allclose(emb[1], np.concatenate([np.cos(2 * freqs), np.sin(2 * freqs)]),
                             rtol=1e-6)
  assert dit.timestep_embedding(jnp.zeros(2), 7).shape == (2, 7)


def test_every_parameter_has_logical_axis_names():
  model = dit.DiT(patch_size=2, hidden_size=32, depth=2, num_heads=4, num_classes=10,
                  augment_dim=3)
  boxed = _param_shapes(model, jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,)),
                        jnp.zeros((1, 10)), jnp.zeros((1, 3)))
  is_box = lambda v: isinstance(v, nn.Partitioned)
  leaves = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=is_box)[0]
  assert leaves and all(is_box(leaf) for _, leaf in leaves)
  used = set()
  for path, leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim, (path, leaf.names)
    used |= set(leaf.names)
  assert used == set(dit.DIT_LOGICAL_AXIS_NAMES)
  # Every DiT axis name is one jaxdiff's sharding rules know (layers.LOGICAL_AXIS_NAMES).
  assert dit.DIT_NEW_LOGICAL_AXIS_NAMES == ()
  assert set(dit.DIT_LOGICAL_AXIS_NAMES) == set(layers.LOGICAL_AXIS_NAMES) - {'norm'}
  block = boxed['blocks_0']
  assert block['attn']['qkv']['kernel'].names == ('embed_in', 'qkv', 'heads', 'head_dim')
  assert block['attn']['proj']['kernel'].names == ('heads', 'head_dim', 'embed_out')
  assert block['mlp']['fc1']['kernel'].names == ('embed_in', 'mlp')
  assert block['mlp']['fc2']['kernel'].names == ('mlp', 'embed_out')
  specs = nn.logical_to_mesh(nn.get_partition_spec(boxed),
                             [('heads', 'model'), ('mlp', 'model'), ('embed_in', 'fsdp')])
  assert tuple(specs['blocks_0']['attn']['qkv']['kernel']) == ('fsdp', None, 'model', None)
  assert tuple(specs['blocks_0']['mlp']['fc2']['kernel']) == ('model', None)


def test_options_shapes_dtypes_remat_and_errors():
  model, params, g = _golden('dit_p4')   # patch 4, 16x16x3, learn_sigma=False
  x, t, y = g['x'], g['t'], g['y']
  ref = np.asarray(jax.jit(model.apply)({'params': params}, x, t, y))
  remat = model.clone(remat_blocks=True)
  np.testing.assert_allclose(jax.jit(remat.apply)({'params': params}, x, t, y), ref,
                             rtol=1e-6, atol=1e-6)
  bf16 = model.clone(dtype=jnp.bfloat16)
  out = jax.jit(bf16.apply)({'params': params}, x, t, y)
  assert out.dtype == jnp.float32   # x's dtype, computed in bfloat16
  rel = np.abs(np.asarray(out) - ref).max() / np.abs(ref).max()
  assert 1e-5 < rel < 0.1, rel
  assert jax.eval_shape(bf16.apply, {'params': params}, x.astype(jnp.bfloat16), t,
                        y).dtype == jnp.bfloat16
  # Rectangular inputs (the positional grid follows the input): same parameters.
  rect = nn.unbox(_param_shapes(model, jnp.zeros((1, 8, 16, 3)), jnp.zeros((1,)),
                                jnp.zeros((1,), jnp.int32)))
  assert jax.tree.map(lambda a: a.shape, rect) == jax.tree.map(np.shape, params)
  assert jax.eval_shape(model.apply, {'params': params}, x[:, :8], t, y).shape == (2, 8, 16, 3)
  with pytest.raises(ValueError, match='divisible by patch_size'):
    jax.eval_shape(model.apply, {'params': params}, x[:, :6], t, y)
  with pytest.raises(ValueError, match='NHWC'):
    jax.eval_shape(model.apply, {'params': params}, x[0], t, y)


def test_build_model_makes_dit_from_the_config():
  """model.name='dit' with a preset (and overrides): the official count for DiT-XL/2 on
  ImageNet-256 latents, every parameter's logical axes known to jaxdiff, clear errors."""
  import ml_collections
  from jaxdiff import models

  cfg = ml_collections.ConfigDict(dict(name='dit', dit_preset='DiT-XL/2', learn_sigma=True,
                                       label_dropout=0.1))
  model = models.build_model(cfg, image_shape=(32, 32, 4), num_classes=1000)
  boxed = jax.eval_shape(lambda: model.init(
      {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(0)},
      jnp.zeros((1, 32, 32, 4)), jnp.zeros((1,)), jnp.zeros((1, 1000)))['params'])
  # The official total less the frozen pos_embed (a constant here): OFFICIAL_PARAMS.
  assert count_params(boxed) == 674_834_720
  names = {n for leaf in jax.tree.leaves(boxed, is_leaf=lambda x: hasattr(x, 'names'))
           for n in getattr(leaf, 'names', ()) if n}
  assert names <= set(layers.LOGICAL_AXIS_NAMES), names - set(layers.LOGICAL_AXIS_NAMES)
  cfg.dit_preset = 'DiT-XXL/2'
  with pytest.raises(ValueError, match="model.dit_preset='DiT-XXL/2'"):
    models.build_model(cfg, image_shape=(32, 32, 4), num_classes=1000)
  cfg.dit_preset, cfg.dit_patch_size = 'DiT-S/2', 8
  with pytest.raises(ValueError, match="patch size 8"):
    models.build_model(cfg, image_shape=(12, 12, 4), num_classes=0)

