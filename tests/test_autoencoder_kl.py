"""Tests of jaxdiff.models.autoencoder_kl and jaxdiff.convert.autoencoder_kl: Stable
Diffusion's KL-f8 autoencoder (Rombach et al. 2022, arXiv 2112.10752) as DiT uses it,
against diffusers' official AutoencoderKL.

Goldens: tests/goldens/autoencoder_kl_tiny.safetensors is a tiny diffusers AutoencoderKL
written by its own `save_pretrained`; autoencoder_kl_tiny.npz holds fixed inputs and the
official encode / decode outputs (NHWC), its config.json and the CompVis/ldm name of every
tensor (checked by diffusers' own converter); regenerate with
tests/goldens/make_autoencoder_kl_goldens.py (diffusers 0.31, torch 2.13, scratch venv).
The full-size model is checked with jax.eval_shape only (no allocation).
"""
import functools
import json
import os
import shutil
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import weights
from jaxdiff.convert import autoencoder_kl as convert
from jaxdiff.errors import MissingWeightsFileError, WeightsFileError
from jaxdiff.models import autoencoder_kl as vae_lib
from jaxdiff.models.autoencoder_kl import AutoencoderKL

GOLDENS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'goldens')
TINY = os.path.join(GOLDENS, 'autoencoder_kl_tiny.safetensors')
TINY_GROUPS = 8   # GroupNorm groups of the golden (not recorded in the weights)
# max |ours - official| <= GOLDEN_RTOL * max |official|, float32 on CPU
# (measured: mean 6.4e-7, logvar 4.4e-7, decode 1.4e-6, reconstruction 2.0e-6).
GOLDEN_RTOL = 1e-5
# sum(p.numel() for p in AutoencoderKL(block_out_channels=(128, 256, 512, 512),
# layers_per_block=2, latent_channels=4, norm_num_groups=32, ...).parameters()), diffusers
# 0.31.0 (make_autoencoder_kl_goldens.py --counts): Stable Diffusion's KL-f8 VAE.
SD_VAE_PARAMS = 83_653_863


@functools.cache
def golden():
  with np.load(os.path.join(GOLDENS, 'autoencoder_kl_tiny.npz')) as g:
    return {k: g[k] for k in g.files}


@functools.cache
def tiny():
  return convert.load_autoencoder_kl(TINY, norm_num_groups=TINY_GROUPS)


def official_state_dict():
  return convert.read_safetensors(TINY)


def write_safetensors(path, tensors, dtype='F32'):
  """A safetensors file of `tensors` (float32 arrays) stored as F32, F16 or BF16."""
  header, blobs, offset = {}, [], 0
  for name, value in tensors.items():
    value = np.ascontiguousarray(value, np.float32)
    if dtype == 'F16':
      raw = value.astype('<f2')
    elif dtype == 'BF16':   # round to nearest even in the top 16 bits
      bits = value.view(np.uint32).astype(np.uint64)
      raw = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype('<u2')
    else:
      raw = value.astype('<f4')
    blob = raw.tobytes()
    header[name] = dict(dtype=dtype, shape=list(value.shape),
                        data_offsets=[offset, offset + len(blob)])
    blobs.append(blob)
    offset += len(blob)
  head = json.dumps(dict(header, __metadata__={'format': 'pt'})).encode()
  head += b' ' * (-len(head) % 8)
  with open(path, 'wb') as f:
    f.write(struct.pack('<Q', len(head)) + head + b''.join(blobs))


def assert_close(ours, ref, rtol=GOLDEN_RTOL):
  ours = np.asarray(ours)
  assert ours.shape == ref.shape
  err = np.abs(ours - ref).max() / np.abs(ref).max()
  assert err <= rtol, err


def assert_same_params(a, b):
  fa, fb = weights.flatten(a), weights.flatten(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def one_line_error(path, **kw):
  with pytest.raises(WeightsFileError) as e:
    convert.load_autoencoder_kl(str(path), **kw)
  msg = str(e.value)
  assert '\n' not in msg and str(path) in msg, msg
  return msg


# ------------------------------------------------------------------ against diffusers

def test_golden_matches_official_encode_and_decode():
  config, params = tiny()
  g = golden()
  official = json.loads(str(g['config_json']))
  assert config['block_out_channels'] == tuple(official['block_out_channels'])
  assert config['layers_per_block'] == official['layers_per_block']
  assert config['latent_channels'] == official['latent_channels']
  vae = AutoencoderKL(**config)
  mean, logvar = jax.jit(functools.partial(vae.apply, method=AutoencoderKL.encode))(
      {'params': params}, g['x'])
  assert_close(mean, g['mean'])
  assert_close(logvar, g['logvar'])
  decode = jax.jit(functools.partial(vae.apply, method=AutoencoderKL.decode))
  assert_close(decode({'params': params}, g['z']), g['decoded'])
  assert_close(jax.jit(vae.apply)({'params': params}, g['x']), g['recon'])


def test_diffusers_directory_with_config_json(tmp_path):
  # The layout of a downloaded model: weights and config.json (groups come from it).
  shutil.copy(TINY, tmp_path / 'diffusion_pytorch_model.safetensors')
  (tmp_path / 'config.json').write_text(str(golden()['config_json']))
  config, params = convert.load_autoencoder_kl(str(tmp_path))
  assert config == tiny()[0]
  assert_same_params(params, tiny()[1])
  cfg = json.loads(str(golden()['config_json']))
  (tmp_path / 'config.json').write_text(json.dumps(dict(cfg, layers_per_block=2)))
  assert 'config.json' in one_line_error(tmp_path / 'diffusion_pytorch_model.safetensors')


def test_groups_not_dividing_channels_refused():
  assert 'norm_num_groups' in one_line_error(TINY)   # 32 groups, 16 channels


# ------------------------------------------------------------------ the full SD VAE (shapes)

def test_sd_vae_parameter_count_equals_diffusers():
  assert vae_lib.param_count() == SD_VAE_PARAMS
  assert vae_lib.param_count(vae_lib.kl_f8_config()) == SD_VAE_PARAMS


def test_sd_vae_round_trip_shapes():
  vae = AutoencoderKL(**vae_lib.kl_f8_config())
  params = vae_lib.param_shapes(vae_lib.kl_f8_config())
  x = jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32)
  mean, logvar = jax.eval_shape(
      functools.partial(vae.apply, method=AutoencoderKL.encode), {'params': params}, x)
  assert mean.shape == logvar.shape == (2, 32, 32, 4)
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
  z = jax.eval_shape(vae_lib.sample_latent, key, mean, logvar)
  out = jax.eval_shape(functools.partial(vae.apply, method=AutoencoderKL.decode),
                       {'params': params}, z)
  assert out.shape == (2, 256, 256, 3) and out.dtype == jnp.float32
  convert.check_params(params, vae_lib.kl_f8_config())


# ------------------------------------------------------------------ the posterior

def test_logvar_clipped_as_diffusers():
  config, params = tiny()
  vae, x = AutoencoderKL(**config), golden()['x']
  for bias, bound in ((100.0, 20.0), (-100.0, -30.0)):
    p = jax.tree.map(lambda a: a, params)
    b = p['quant_conv']['bias']
    p['quant_conv']['bias'] = b.at[config['latent_channels']:].set(bias)
    _, logvar = vae.apply({'params': p}, x, method=AutoencoderKL.encode)
    np.testing.assert_array_equal(np.asarray(logvar), bound)


def test_sample_latent():
  key = jax.random.key(3)
  mean = jnp.arange(8.0).reshape(1, 2, 1, 4)
  logvar = jnp.full_like(mean, jnp.log(0.25))
  z = vae_lib.sample_latent(key, mean, logvar)
  noise = jax.random.normal(key, mean.shape)
  np.testing.assert_allclose(z, mean + 0.5 * noise, rtol=1e-6)
  big = vae_lib.sample_latent(key, mean, jnp.full_like(mean, 1e3))   # clipped to 20
  np.testing.assert_allclose(big, mean + np.exp(10.0) * noise, rtol=1e-5)
  assert vae_lib.SCALE_FACTOR == 0.18215


# ------------------------------------------------------------------ other files and layouts

def test_float16_and_bfloat16_safetensors(tmp_path):
  sd = official_state_dict()
  for dtype, rtol in (('F16', 5e-3), ('BF16', 3e-2)):
    path = tmp_path / f'vae_{dtype}.safetensors'
    write_safetensors(path, sd, dtype)
    config, params = convert.load_autoencoder_kl(str(path), norm_num_groups=TINY_GROUPS)
    assert config == tiny()[0]
    got, ref = weights.flatten(params), weights.flatten(tiny()[1])
    for k in ref:
      assert got[k].dtype == jnp.float32
      np.testing.assert_allclose(got[k], ref[k], rtol=rtol, atol=rtol * 1e-2, err_msg=k)
  # F16 storage exactly: the loaded values are the float16 values.
  path = tmp_path / 'vae_F16.safetensors'
  f16 = convert.read_safetensors(str(path))
  for k, v in sd.items():
    np.testing.assert_array_equal(f16[k], v.astype(np.float16).astype(np.float32))


def test_ldm_layout_in_sd_checkpoint_loads_same_params(tmp_path):
  torch = pytest.importorskip('torch')
  sd, g = official_state_dict(), golden()
  names = dict(zip(g['diffusers_keys'].tolist(), g['ldm_keys'].tolist()))
  assert sorted(names) == sorted(sd)
  ldm = {}
  for k, v in sd.items():
    if '.attn_1.' in names[k] and v.ndim == 2:
      v = v[:, :, None, None]   # ldm's attention projections are 1x1 convs
    ldm['first_stage_model.' + names[k]] = torch.from_numpy(np.array(v))
  # A Stable Diffusion checkpoint: other models beside the VAE, and ldm's loss modules.
  ldm['model.diffusion_model.input_blocks.0.0.weight'] = torch.zeros(2, 2)
  ldm['first_stage_model.loss.logvar'] = torch.zeros(())
  path = tmp_path / 'sd.ckpt'
  torch.save({'state_dict': ldm, 'global_step': 7}, path)   # a Lightning checkpoint
  config, params = convert.load_autoencoder_kl(str(path), norm_num_groups=TINY_GROUPS)
  assert config == tiny()[0]
  assert_same_params(params, tiny()[1])
  # The bare ldm VAE state dict (no prefix, no loss) as a plain .pth.
  prefix = 'first_stage_model.'
  torch.save({k[len(prefix):]: v for k, v in ldm.items()
              if k.startswith(prefix) and '.loss.' not in k}, tmp_path / 'vae.pth')
  _, params = convert.load_autoencoder_kl(str(tmp_path / 'vae.pth'), norm_num_groups=TINY_GROUPS)
  assert_same_params(params, tiny()[1])


def test_old_diffusers_attention_names_and_bin(tmp_path):
  torch = pytest.importorskip('torch')
  old = {'to_q': 'query', 'to_k': 'key', 'to_v': 'value', 'to_out.0': 'proj_attn'}
  sd = {}
  for k, v in official_state_dict().items():
    for new, name in old.items():
      k = k.replace(f'attentions.0.{new}.', f'attentions.0.{name}.')
    sd[k] = torch.from_numpy(np.array(v))
  assert any('.query.' in k for k in sd)
  torch.save(sd, tmp_path / 'diffusion_pytorch_model.bin')
  _, params = convert.load_autoencoder_kl(str(tmp_path), norm_num_groups=TINY_GROUPS)
  assert_same_params(params, tiny()[1])


# ------------------------------------------------------------------ errors, one line each

def test_wrong_shape_missing_and_unexpected_keys(tmp_path):
  sd = official_state_dict()
  bad = dict(sd, **{'decoder.conv_out.weight': np.zeros((3, 16, 1, 1), np.float32)})
  write_safetensors(tmp_path / 'shape.safetensors', bad)
  msg = one_line_error(tmp_path / 'shape.safetensors', norm_num_groups=TINY_GROUPS)
  assert '1 wrong shapes' in msg and 'decoder.conv_out.weight' in msg, msg
  bad = {k: v for k, v in sd.items() if k != 'decoder.mid_block.attentions.0.to_k.bias'}
  bad['encoder.extra.weight'] = np.ones(3, np.float32)
  write_safetensors(tmp_path / 'keys.safetensors', bad)
  msg = one_line_error(tmp_path / 'keys.safetensors', norm_num_groups=TINY_GROUPS)
  assert '1 missing keys (e.g. decoder.mid_block.attentions.0.to_k.bias)' in msg, msg
  assert '1 unexpected keys (e.g. encoder.extra.weight)' in msg, msg
  bad = dict(sd, **{'quant_conv.bias': np.full(8, np.nan, np.float32)})
  write_safetensors(tmp_path / 'nan.safetensors', bad)
  assert 'NaN' in one_line_error(tmp_path / 'nan.safetensors', norm_num_groups=TINY_GROUPS)


def test_garbage_truncated_and_absent_files(tmp_path):
  rng = np.random.RandomState(0)
  for name in ('garbage.safetensors', 'garbage.bin', 'garbage.pth'):
    (tmp_path / name).write_bytes(rng.bytes(4096))
    one_line_error(tmp_path / name)
  (tmp_path / 'text.safetensors').write_bytes(struct.pack('<Q', 5) + b'hello' + b'\0' * 8)
  assert 'not JSON' in one_line_error(tmp_path / 'text.safetensors')
  with open(TINY, 'rb') as f:
    data = f.read()
  (tmp_path / 'cut.safetensors').write_bytes(data[:len(data) // 2])
  assert 'truncated' in one_line_error(tmp_path / 'cut.safetensors')
  write_safetensors(tmp_path / 'other.safetensors', {'conv.weight': np.ones((2, 2))})
  assert 'no AutoencoderKL encoder' in one_line_error(tmp_path / 'other.safetensors')
  with pytest.raises(MissingWeightsFileError, match='never downloads'):
    convert.load_autoencoder_kl(str(tmp_path / 'absent.safetensors'))


def test_check_params_reports_one_line():
  config, params = tiny()
  convert.check_params(params, config)
  p = jax.tree.map(lambda a: a, params)
  del p['decoder']['conv_out']['bias']
  p['encoder']['conv_in']['kernel'] = jnp.zeros((1, 1, 3, 16))
  with pytest.raises(WeightsFileError) as e:
    convert.check_params(p, config)
  msg = str(e.value)
  assert '\n' not in msg and '1 missing' in msg and '1 wrong shapes' in msg, msg
