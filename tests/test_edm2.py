"""Tests of jaxdiff.models.edm2: EDM2's magnitude-preserving UNet and preconditioning
(Karras et al. 2024) against the official NVlabs/edm2 training/networks_edm2.py.

Golden: tests/goldens/edm2_forward.npz holds an official Precond's state dict (torch key names,
float32, Fourier buffers included; gains redrawn so the output is not trivially c_skip x), the
inputs, the official float32 CPU outputs D_x, logvar and F_x (NHWC), and a few stored weights
after one official training forward (forced weight normalisation). Regenerate with
tests/goldens/make_edm2_goldens.py. Parameter counts use jax.eval_shape (no compute).
"""
import ast
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion.precond import denoise
from jaxdiff.models import count_params, edm2, layers

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'goldens',
                      'edm2_forward.npz')
# Our float32 forward against the official float32 (PyTorch CPU) forward:
# max |ours - official| <= GOLDEN_RTOL * max |official| (measured: 6e-7 for D_x, 9e-7 for
# F_x, 4e-7 for logvar).
GOLDEN_RTOL = 1e-5

# sum(p.numel() for p in net.parameters()) of the official Precond(img_resolution=64,
# img_channels=3, label_dim=1000, model_channels=..., dropout=...) of train_edm2.py's
# edm2-img64-* presets (logvar head included), and of its .unet alone. Counted with
# tests/goldens/make_edm2_goldens.py --counts (torch 2.13, NVlabs/edm2 4bf8162).
OFFICIAL_PARAMS = {
    'XS': (124_710_949, 124_710_821),
    'S': (280_209_381, 280_209_253),
    'M': (497_803_173, 497_803_045),
    'L': (777_492_325, 777_492_197),
    'XL': (1_119_276_837, 1_119_276_709),
}


def _spec(shape, dtype=jnp.float32):
  return jax.ShapeDtypeStruct(shape, dtype)


@functools.cache
def _golden():
  with np.load(GOLDEN) as g:
    data = {k: g[k] for k in g.files}
  cfg = ast.literal_eval(str(data['config']))
  sd = {k[len('sd/'):]: v for k, v in data.items() if k.startswith('sd/')}
  buffers = edm2.fourier_buffers_from_official_state_dict(sd)
  logvar = edm2.EDM2LogVar(cfg.pop('logvar_channels'), **buffers['logvar'])
  unet = edm2.EDM2UNet(**cfg, **buffers['unet'])
  params = edm2.params_from_official_state_dict(sd)
  return unet, logvar, params, sd, data


@functools.cache
def _golden_outputs():
  """Ours on the golden inputs, one compiled program: edm2_denoise's (D_x, logvar), the raw
  UNet at c_in x, c_noise, and jaxdiff's own ``denoise`` around the raw UNet."""
  unet, logvar, params, _, g = _golden()

  def run(p, x, sigma, labels):
    d_x, lv = edm2.edm2_denoise(unet, p, x, sigma, labels, logvar=logvar)
    c_in = 1 / jnp.sqrt(0.25 + sigma ** 2)
    f_x = unet.apply({'params': p['unet']}, x * c_in[:, None, None, None], jnp.log(sigma) / 4,
                     labels)
    apply_fn = lambda q, x_in, c_noise, y, aug, train, key: unet.apply(
        {'params': q}, x_in, c_noise, y, aug)
    d_jaxdiff = denoise(apply_fn, p['unet'], x, sigma, class_labels=labels)
    return dict(D_x=d_x, logvar=lv, F_x=f_x, D_jaxdiff=d_jaxdiff)

  return jax.jit(run)(params, g['x'], g['sigma'], g['class_labels'])


def _assert_close(out, ref, rtol=GOLDEN_RTOL):
  out, ref = np.asarray(out), np.asarray(ref)
  assert out.shape == ref.shape, (out.shape, ref.shape)
  err = np.abs(out - ref).max()
  assert err <= rtol * np.abs(ref).max(), (err, np.abs(ref).max())


def _tiny(**kw):
  """A one-level 4x4 model (enc conv + block, dec in0 with attention, in1, 2 blocks) for the
  behaviour tests; the golden covers the multi-level structure."""
  cfg = dict(img_resolution=4, img_channels=3, label_dim=4, model_channels=8,
             channel_mult=(1,), num_blocks=1, attn_resolutions=(4,), channels_per_head=4)
  cfg.update(kw)
  return edm2.EDM2UNet(**cfg)


def _tiny_inputs(batch=2):
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.standard_normal((batch, 4, 4, 3)), jnp.float32)
  c_noise = jnp.asarray(np.log([0.1, 5.0][:batch]) / 4, jnp.float32)
  labels = jax.nn.one_hot(jnp.arange(batch) % 4, 4)
  return x, c_noise, labels


def _tiny_params(model, seed=0):
  """Params drawn in numpy on the init's shapes (initialising in JAX compiles slowly on CPU):
  kernels ~ N(0, 1) as the official init, gains 1 + N(0, 0.1^2) (0 at init would make the
  output 0)."""
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), *_tiny_inputs())['params'])
  rng = np.random.RandomState(seed)
  return jax.tree.map(
      lambda s: jnp.asarray(rng.standard_normal(s.shape) if s.ndim
                            else 1.0 + 0.1 * rng.standard_normal(), jnp.float32), shapes)


@functools.cache
def _apply(model):
  return jax.jit(model.apply, static_argnames='train')


# ---------------------------------------------------------------------------------------
# Presets and parameter counts.

def test_presets_are_the_official_img64_configs():
  assert list(edm2.EDM2_IMG64_PRESETS) == list(OFFICIAL_PARAMS)
  channels = {'XS': 128, 'S': 192, 'M': 256, 'L': 320, 'XL': 384}
  for name, preset in edm2.EDM2_IMG64_PRESETS.items():
    assert preset == dict(img_resolution=64, img_channels=3, label_dim=1000,
                          model_channels=channels[name], channel_mult=(1, 2, 3, 4),
                          num_blocks=3, attn_resolutions=(16, 8),
                          dropout=0.0 if name in ('XS', 'S') else 0.1)
  assert edm2.edm2_preset('M').dropout == 0.1
  assert edm2.edm2_preset('S', dropout=0.05).dropout == 0.05
  with pytest.raises(ValueError, match='XXL'):
    edm2.edm2_preset('XXL')


@pytest.mark.parametrize('name', ['S', 'M', 'L', 'XL'])
def test_param_count_equals_official(name):
  precond_total, unet_total = OFFICIAL_PARAMS[name]
  model = edm2.edm2_preset(name)
  shapes = jax.eval_shape(model.init, jax.random.key(0), _spec((1, 64, 64, 3)), _spec((1,)),
                          _spec((1, 1000)))['params']
  logvar = jax.eval_shape(edm2.EDM2LogVar().init, jax.random.key(0), _spec((1,)))['params']
  assert count_params(shapes) == unet_total
  assert count_params(shapes) + count_params(logvar) == precond_total   # + 128 (logvar)


# ---------------------------------------------------------------------------------------
# Goldens from the official code.

def test_param_tree_matches_the_mapped_state_dict():
  unet, logvar, params, _, g = _golden()
  shapes = jax.eval_shape(unet.init, jax.random.key(0), g['x'], g['sigma'],
                          g['class_labels'])['params']
  assert jax.tree.map(lambda a: a.shape, nn.unbox(shapes)) == jax.tree.map(np.shape,
                                                                           params['unet'])
  lv_shapes = jax.eval_shape(logvar.init, jax.random.key(0), g['sigma'])['params']
  assert jax.tree.map(lambda a: a.shape, nn.unbox(lv_shapes)) == jax.tree.map(
      np.shape, params['logvar'])
  # Every parameter carries logical axis names that jaxdiff's rules know.
  for box in jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
    assert isinstance(box, nn.Partitioned)
    assert len(box.names) == len(box.value.shape)
    assert set(box.names) <= set(layers.LOGICAL_AXIS_NAMES)


def test_precond_forward_matches_official():
  _, _, _, _, g = _golden()
  out = _golden_outputs()
  assert out['D_x'].shape == g['x'].shape and out['D_x'].dtype == jnp.float32
  _assert_close(out['D_x'], g['D_x'])
  _assert_close(out['logvar'], g['logvar'])


def test_raw_unet_matches_official_and_jaxdiff_denoise():
  out = _golden_outputs()
  _assert_close(out['F_x'], _golden()[4]['F_x'])
  # jaxdiff's own preconditioner around the raw network gives the official Precond output.
  _assert_close(out['D_jaxdiff'], _golden()[4]['D_x'])


def test_labels_formats():
  # (The golden's last row is an all-zero label row: "no label", as the official's None.)
  model = _tiny()
  x, c_noise, labels = _tiny_inputs()
  params = _tiny_params(model)
  apply = lambda y: _apply(model)({'params': params}, x, c_noise, y)
  one_hot = apply(labels)
  np.testing.assert_allclose(apply(jnp.asarray([0, 1])), one_hot, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(apply(None), apply(jnp.zeros_like(labels)), rtol=1e-6, atol=1e-6)
  assert np.abs(apply(None) - one_hot).max() > 1e-3


def test_state_dict_mapping_variants_and_errors():
  _, _, params, sd, _ = _golden()
  prefixed = {'module.' + k: v for k, v in sd.items()}   # DDP checkpoints
  assert jax.tree.all(jax.tree.map(np.array_equal,
                                   edm2.params_from_official_state_dict(prefixed), params))
  bare = {k[len('unet.'):]: v for k, v in sd.items() if k.startswith('unet.')}
  mapped = edm2.params_from_official_state_dict(bare)
  assert set(mapped) == {'unet'}
  assert jax.tree.all(jax.tree.map(np.array_equal, mapped['unet'], params['unet']))
  assert set(edm2.fourier_buffers_from_official_state_dict(bare)) == {'unet'}
  with pytest.raises(ValueError, match='not mapped'):
    edm2.params_from_official_state_dict({**sd, 'extra.weight': np.zeros(3)})
  conv = sd['unet.enc.16x16_conv.weight']                # OIHW -> HWIO
  np.testing.assert_array_equal(params['unet']['enc_16x16_conv']['kernel'],
                                conv.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params['logvar']['linear']['kernel'],
                                sd['logvar_linear.weight'].T)
  assert edm2.unet_config_from_official_state_dict(sd) == dict(
      img_resolution=16, img_channels=3, model_channels=16, label_dim=10, num_blocks=1)


def test_fourier_constants_are_seeded_and_overridable():
  f = edm2.MPFourier(6, seed=3)
  freqs, phases = f.constants()
  again = edm2.fourier_constants(6, seed=3)
  np.testing.assert_array_equal(freqs, again[0])
  np.testing.assert_array_equal(phases, again[1])
  assert np.all((phases >= 0) & (phases < 2 * np.pi))
  x = jnp.asarray([0.0, -1.3])
  np.testing.assert_allclose(f.apply({}, x), np.sqrt(2) * np.cos(
      np.asarray(x)[:, None] * freqs + phases), rtol=1e-5, atol=1e-6)
  assert not np.array_equal(edm2.MPFourier(6, seed=4).constants()[0], freqs)
  given = edm2.MPFourier(2, freqs=(1.0, 2.0), phases=(0.0, 0.5))
  np.testing.assert_allclose(given.apply({}, jnp.asarray([1.0])),
                             [[np.sqrt(2) * np.cos(1.0), np.sqrt(2) * np.cos(2.5)]], rtol=1e-6)
  with pytest.raises(ValueError, match='entries'):
    edm2.MPFourier(3, freqs=(1.0, 2.0)).apply({}, x)
  # The UNet and the log-variance head draw different constants by default.
  assert edm2.EDM2UNet(img_resolution=8, img_channels=3).fourier_seed != (
      edm2.EDM2LogVar().fourier_seed)


# ---------------------------------------------------------------------------------------
# Forced weight normalisation.

def test_force_normalize_formula_and_official_training_forward():
  _, _, params, _, g = _golden()
  normed = jax.jit(edm2.force_normalize)(params)
  # Against the official: the stored weights after one training forward.
  for key, path in [('unet.enc.16x16_conv.weight', ('unet', 'enc_16x16_conv')),
                    ('unet.dec.8x8_in0.attn_qkv.weight', ('unet', 'dec_8x8_in0', 'attn_qkv')),
                    ('unet.emb_label.weight', ('unet', 'emb_label')),
                    ('logvar_linear.weight', ('logvar', 'linear'))]:
    node = normed
    for part in path:
      node = node[part]
    official = g['fwn/' + key]
    official = official.transpose(2, 3, 1, 0) if official.ndim == 4 else official.T
    np.testing.assert_allclose(node['kernel'], official, rtol=1e-6, atol=1e-6)
  # Against the formula: w / (eps + |w_unit| / sqrt(fan_in)), per output unit (last axis).
  w = np.asarray(params['unet']['enc_8x8_block0']['conv_res0']['kernel'], np.float64)
  fan_in = np.prod(w.shape[:-1])
  norm = np.sqrt(np.sum(w ** 2, axis=(0, 1, 2), keepdims=True))
  expected = w / (1e-4 + norm / np.sqrt(fan_in))
  got = np.asarray(normed['unet']['enc_8x8_block0']['conv_res0']['kernel'])
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
  rms = np.sqrt(np.mean(got.astype(np.float64) ** 2, axis=(0, 1, 2)))
  np.testing.assert_allclose(rms, 1.0, rtol=2e-4)
  # Gains are not kernels: unchanged.
  assert normed['unet']['out_gain'] == params['unet']['out_gain']
  assert normed['unet']['dec_8x8_in0']['emb_gain'] == params['unet']['dec_8x8_in0']['emb_gain']


def test_force_normalize_boxed_and_forward_invariance():
  model = _tiny()
  x, c_noise, labels = _tiny_inputs()
  boxed = jax.eval_shape(model.init, jax.random.key(0), x, c_noise, labels)['params']
  params = _tiny_params(model)
  boxed = jax.tree.map(lambda box, value: box.replace_boxed(value), boxed, params,
                       is_leaf=lambda v: isinstance(v, nn.Partitioned))
  normed_boxed = edm2.force_normalize(boxed)
  assert isinstance(normed_boxed['emb_noise']['kernel'], nn.Partitioned)
  assert normed_boxed['emb_noise']['kernel'].names == ('embed_in', 'embed_out')
  normed = edm2.force_normalize(params)
  assert jax.tree.all(jax.tree.map(np.array_equal, nn.unbox(normed_boxed), normed))
  apply = _apply(model)
  ref = apply({'params': params}, x, c_noise, labels)
  assert np.abs(ref).max() > 0.1
  # The forward normalises each unit itself: forcing the norm, or scaling a kernel, changes
  # the output only through the eps (relative ~ eps |1 - r| / r per layer, r = the unit's
  # RMS weight; r is far from 1 for the small fan-ins here).
  _assert_close(apply({'params': normed}, x, c_noise, labels), ref, 1e-3)
  scaled = jax.tree_util.tree_map_with_path(
      lambda path, a: a * 3.0 if path[-1].key == 'kernel' else a, params)
  _assert_close(apply({'params': scaled}, x, c_noise, labels), ref, 1e-3)
  # Idempotent up to the eps.
  _assert_close(edm2.force_normalize(normed)['dec_4x4_block0']['conv_res0']['kernel'],
                normed['dec_4x4_block0']['conv_res0']['kernel'], 5e-4)


# ---------------------------------------------------------------------------------------
# Initialisation, train mode, dropout, interface checks.

def test_init_is_official_and_output_exactly_zero():
  model = _tiny()
  x, c_noise, labels = _tiny_inputs()
  # The 'rbg' key compiles the init's draws much faster on CPU than threefry.
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0, impl='rbg'), x, c_noise,
                                        labels)['params'])
  out = _apply(model)({'params': params}, x, c_noise, labels)
  assert out.shape == x.shape and out.dtype == x.dtype
  assert np.all(np.asarray(out) == 0.0)       # out_gain = 0
  assert params['out_gain'] == 0 and params['enc_4x4_block0']['emb_gain'] == 0
  kernels = np.concatenate([np.ravel(k) for p, k in jax.tree_util.tree_leaves_with_path(params)
                            if p[-1].key == 'kernel'])
  assert abs(kernels.std() - 1.0) < 0.05 and abs(kernels.mean()) < 0.05   # torch.randn
  assert params['enc_4x4_conv']['kernel'].shape == (3, 3, 4, 8)   # + the ones channel
  assert 'bias' not in str(jax.tree_util.tree_structure(params))


def test_train_mode_dropout_and_label_dropout():
  plain = _tiny()
  model = plain.clone(dropout=0.5)
  x, c_noise, labels = _tiny_inputs()
  params = _tiny_params(model)
  evaluation = _apply(plain)({'params': params}, x, c_noise, labels)
  apply = _apply(model)
  rngs = lambda k: {'dropout': jax.random.key(k)}
  a = apply({'params': params}, x, c_noise, labels, train=True, rngs=rngs(1))
  b = apply({'params': params}, x, c_noise, labels, train=True, rngs=rngs(1))
  c = apply({'params': params}, x, c_noise, labels, train=True, rngs=rngs(2))
  assert a.shape == x.shape and a.dtype == x.dtype
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - c).max() > 1e-3 and np.abs(a - evaluation).max() > 1e-3
  with pytest.raises(Exception, match='dropout'):
    jax.eval_shape(functools.partial(model.apply, train=True), {'params': params}, x, c_noise,
                   labels)
  # label_dropout (jaxdiff extension) ~ 1, no dropout: in train mode every label is dropped,
  # and the rest is the evaluation forward (train mode changes nothing else).
  dropped = _apply(plain.clone(label_dropout=1.0 - 1e-7))(
      {'params': params}, x, c_noise, labels, train=True, rngs=rngs(3))
  np.testing.assert_allclose(dropped, _apply(plain)({'params': params}, x, c_noise, None),
                             rtol=1e-5, atol=1e-6)


def test_gradients_bfloat16_and_remat():
  model = _tiny()
  x, c_noise, labels = _tiny_inputs()
  params = _tiny_params(model)

  def loss(m, p):
    return jnp.mean(jnp.square(m.apply({'params': p}, x, c_noise, labels, train=True)))

  value, grads = jax.jit(jax.value_and_grad(functools.partial(loss, model)))(params)
  assert np.isfinite(value)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert np.abs(grads['dec_4x4_in0']['attn_qkv']['kernel']).max() > 0
  assert np.abs(grads['enc_4x4_block0']['emb_gain']) > 0
  # remat_blocks: same parameters, and the checkpointed backward pass traces (its values
  # are those of the plain one by construction of nn.remat).
  remat = model.clone(remat_blocks=True)
  _, remat_grads = jax.eval_shape(jax.value_and_grad(functools.partial(loss, remat)), params)
  assert jax.tree.map(np.shape, remat_grads) == jax.tree.map(np.shape, grads)
  low = model.clone(dtype=jnp.bfloat16)
  out32 = _apply(model)({'params': params}, x, c_noise, labels)
  out16 = _apply(low)({'params': params}, x, c_noise, labels)
  assert out16.dtype == jnp.float32                     # x's dtype
  _assert_close(out16, out32, 0.05)


def test_interface_errors():
  model = _tiny()
  x, c_noise, labels = _tiny_inputs()
  params = _tiny_params(model)
  shape = lambda *args: jax.eval_shape(model.apply, {'params': params}, *args)
  with pytest.raises(ValueError, match='augment_labels'):
    shape(x, c_noise, labels, jnp.zeros((2, 9)))
  with pytest.raises(ValueError, match='expects x of shape'):
    shape(x[:, :2, :2], c_noise, labels)
  with pytest.raises(ValueError, match='class_labels'):
    shape(x, c_noise, labels[:, :3])
  # A scalar noise label is broadcast over the batch; bfloat16 x gives bfloat16 F.
  assert shape(x, 0.5, labels).shape == x.shape
  assert jax.eval_shape(model.clone(dtype=jnp.bfloat16).apply, {'params': params},
                        x.astype(jnp.bfloat16), c_noise, labels).dtype == jnp.bfloat16


# ---------------------------------------------------------------------------------------
# Magnitude-preserving primitives.

def test_primitives_preserve_magnitude():
  rng = np.random.RandomState(0)
  a = jnp.asarray(rng.standard_normal((4096, 64)), jnp.float32)
  b = jnp.asarray(rng.standard_normal((4096, 32)), jnp.float32)
  rms = lambda v: float(jnp.sqrt(jnp.mean(jnp.square(v))))
  assert abs(rms(edm2.mp_silu(a)) - 1.0) < 0.01
  assert abs(rms(edm2.mp_sum(a[:, :32], b, 0.3)) - 1.0) < 0.01
  cat = edm2.mp_cat(a, b, t=0.5)
  assert cat.shape == (4096, 96) and abs(rms(cat) - 1.0) < 0.01
  # mp_cat's t weights the two parts' total contributions (1 - t) : t.
  cat = edm2.mp_cat(a, b, t=0.25)
  ratio = float(jnp.sum(jnp.square(cat[:, :64])) / jnp.sum(jnp.square(cat[:, 64:])))
  assert abs(ratio - 9.0) < 0.2
  y = edm2.normalize(3.0 * a, -1)
  np.testing.assert_allclose(jnp.sqrt(jnp.mean(jnp.square(y), axis=-1)), 1.0, rtol=1e-4)
  # Zero input: zero output and a finite (zero) gradient, as torch's vector_norm.
  zero = jnp.zeros((2, 5))
  assert np.all(edm2.normalize(zero) == 0)
  grad = jax.grad(lambda v: jnp.sum(edm2.normalize(v)))(zero)
  assert np.all(np.isfinite(grad))


def test_build_model_and_the_train_step_apply_forced_weight_normalisation(tmp_path):
  """model.name='edm2' builds EDM2UNet (with its log-variance head: EDM2Denoiser) from the
  config; each train step starts from
  force_normalize(params), as the official training forward does in place."""
  from jaxdiff import config as config_lib
  from jaxdiff import models as models_lib
  from jaxdiff.train import loop
  c = config_lib.load_config("digits_edm:smoke")
  c.model.name, c.model.model_channels, c.model.channel_mult = "edm2", 16, (1, 2)
  c.model.num_blocks, c.model.attn_resolutions, c.model.dropout = 1, (4,), 0.0
  c.train.num_steps, c.train.ckpt_every = 2, 2
  model = models_lib.build_model(c.model, image_shape=(8, 8, 1))
  assert isinstance(model, edm2.EDM2Denoiser) and model.unet.model_channels == 16
  assert models_lib.weight_constraint(c.model) is edm2.force_normalize
  summary = loop.train(c, str(tmp_path))
  assert np.isfinite(summary["final_loss"])
  c.model.augment_dim = 9
  with pytest.raises(ValueError, match="augment_dim=0"):
    models_lib.build_model(c.model, image_shape=(8, 8, 1))
