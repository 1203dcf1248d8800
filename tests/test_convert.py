"""Official NVlabs/edm network pickles in jaxdiff (jaxdiff/convert/, docs/convert.md).

Goldens: tests/goldens/edm_ddpmpp_cond.pkl and edm_ncsnpp_ve.pkl were written by the
official EDM code (tests/goldens/make_edm_pickle_goldens.py) exactly as its training loop
writes a snapshot; edm_pickle_outputs.npz holds the official forward D(x; sigma) on fixed
inputs. `official_denoiser` must reproduce it to float32 rounding (measured <= 6e-7
relative; asserted 1e-5), with the pickle read by jaxdiff's restricted reader alone.
The safety tests feed payloads that would write a file if anything of the pickle ran.
The synthetic pickles (torch only for its tensor pickling) rebuild the persistence form
from jaxdiff's own parameters, for the three preconditioners.
"""
import collections
import json
import os
import pickle
import sys
import types
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import config as config_lib
from jaxdiff import models, weights
from jaxdiff.convert import edm, song_unet, writer
from jaxdiff.convert import EXPECTED, convert, load_network, official_denoiser, read_pickle
from jaxdiff.diffusion import precond as precond_lib
from jaxdiff.errors import ConfigError, MissingWeightsFileError, WeightsFileError
from jaxdiff.train import step as step_lib

GOLDENS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "goldens")
OUTPUTS = os.path.join(GOLDENS, "edm_pickle_outputs.npz")
RTOL = 1e-5


def golden(name):
  return os.path.join(GOLDENS, f"edm_{name}.pkl")


def assert_close_to_official(out, ref):
  scale = np.maximum(np.abs(ref).max(axis=(1, 2, 3)), 1.0)
  err = np.abs(np.asarray(out) - ref).max(axis=(1, 2, 3))
  assert np.all(err <= RTOL * scale), (err, scale)


# ------------------------------------------------------------------ the official goldens

@pytest.mark.parametrize("name", ["ddpmpp_cond", "ncsnpp_ve"])
def test_official_denoiser_equals_the_official_forward(name):
  g = np.load(OUTPUTS)
  d = official_denoiser(golden(name))
  assert_close_to_official(d(g[f"{name}/x"], g["sigma"], g[f"{name}/class_labels"]),
                           g[f"{name}/D"])
  assert_close_to_official(d(g[f"{name}/x"], g["sigma"]), g[f"{name}/D_no_labels"])


def test_the_pickle_is_read_as_records_never_run():
  snap = read_pickle(golden("ddpmpp_cond"))
  assert sorted(snap) == ["augment_pipe", "dataset_kwargs", "ema", "loss_fn"]
  ema = snap["ema"]
  assert ema.class_name == "EDMPrecond" and "class SongUNet" in ema.module_src
  assert snap["loss_fn"].class_name == "EDMLoss" and snap["loss_fn"].get("P_mean") == -1.2
  assert snap["dataset_kwargs"]["path"] == "datasets/digits-8x8.zip"
  unet = ema.modules["model"]
  assert unet.init_kwargs["channel_mult"] == [1, 2]
  assert unet.modules["enc"].class_name == "ModuleDict"
  assert not any(m.startswith("_imported_module_") for m in sys.modules)  # EDM's exec names


def test_ncsnpp_fourier_frequencies_come_from_the_pickle():
  """EDM keeps NCSN++'s frequencies as a buffer (its own draw), unlike jaxdiff's seeded
  constant: they travel as model.fourier_freqs, so a converted workdir's own model is the
  official network; without them the output is another function."""
  g = np.load(OUTPUTS)
  net = load_network(golden("ncsnpp_ve"))
  config = writer.build_config(net)
  assert len(config.model.fourier_freqs) == 8 * 2 // 2   # noise channels / 2
  sigma = jnp.asarray(g["sigma"])
  _, c_out, c_in, c_noise = precond_lib.ve_precond(sigma)
  x = g["ncsnpp_ve/x"]
  for model, close in ((models.build_model(config.model, image_shape=x.shape[1:]), True),
                       (net.converted.module.clone(fourier_freqs=()), False)):
    f = model.apply({"params": net.converted.params}, c_in[:, None, None, None] * x, c_noise)
    d = x + c_out[:, None, None, None] * f
    assert (np.abs(d - g["ncsnpp_ve/D"]).max() < 1e-4) == close


# ------------------------------------------------------------------ refusals

@pytest.fixture
def persistence(monkeypatch):
  """A stand-in module torch_utils.persistence, so that objects pickle in EDM's form."""
  package = types.ModuleType("torch_utils")
  module = types.ModuleType("torch_utils.persistence")

  def _reconstruct_persistent_obj(meta):
    raise AssertionError("only the reader's stand-in may be called")

  _reconstruct_persistent_obj.__module__ = module.__name__
  _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
  module._reconstruct_persistent_obj = _reconstruct_persistent_obj
  package.persistence = module
  monkeypatch.setitem(sys.modules, "torch_utils", package)
  monkeypatch.setitem(sys.modules, "torch_utils.persistence", module)
  return module


class Persistent:
  """Pickles as EDM's persistent classes do: _reconstruct_persistent_obj(meta)."""

  def __init__(self, class_name, state, module_src="# the module's source\n"):
    self.class_name, self.state, self.module_src = class_name, state, module_src

  def __reduce__(self):
    meta = dict(type="class", version=6, module_src=self.module_src,
                class_name=self.class_name, state=self.state)
    return sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (meta,)


def _frag(obj) -> bytes:
  """Opcodes that push `obj` (a protocol-3 pickle without its header and STOP)."""
  return pickle.dumps(obj, protocol=3)[2:-1]


def _call(module: str, name: str, *args: bytes) -> bytes:
  """Opcodes that call module.name(*args): GLOBAL, the argument fragments, TUPLE, REDUCE."""
  return f"c{module}\n{name}\n".encode() + b"(" + b"".join(args) + b"tR"


def _snapshot(ema: bytes) -> bytes:
  return b"\x80\x03}" + _frag("ema") + ema + b"s."


def test_a_foreign_global_is_refused_by_name_and_never_called(tmp_path):
  target = tmp_path / "pwned"
  path = tmp_path / "evil.pkl"
  path.write_bytes(_snapshot(_call("io", "open", _frag(str(target)), _frag("w"))))
  with pytest.raises(WeightsFileError, match=r"io\.open") as e:
    read_pickle(str(path))
  assert EXPECTED in str(e.value) and not target.exists()
  pickle.loads(path.read_bytes())["ema"].close()  # the payload is live: plain pickle runs it
  assert target.exists()


def test_embedded_source_is_kept_as_text_and_never_executed(tmp_path, persistence):
  target = tmp_path / "pwned"
  payload = f"open({str(target)!r}, 'w').write('ran')\n"
  path = tmp_path / "evil_src.pkl"
  path.write_bytes(pickle.dumps(dict(ema=Persistent("EDMPrecond", {}, payload))))
  assert read_pickle(str(path))["ema"].module_src == payload
  with pytest.raises(WeightsFileError, match="img_resolution"):
    load_network(str(path))
  assert not target.exists()


def test_a_global_inside_a_tensor_storage_is_refused(tmp_path):
  target = tmp_path / "pwned"
  storage = b"\x80\x02" + _call("os", "system", _frag(f"touch {target}")) + b"."
  tensor = _call("torch._utils", "_rebuild_tensor_v2",
                 _call("torch.storage", "_load_from_bytes", _frag(storage)),
                 _frag(0), _frag((1,)), _frag((1,)))
  path = tmp_path / "evil_storage.pkl"
  path.write_bytes(_snapshot(tensor))
  with pytest.raises(WeightsFileError, match=r"os\.system"):
    read_pickle(str(path))
  assert not target.exists()


def test_truncated_foreign_and_missing_files_name_the_expected_format(tmp_path):
  data = open(golden("ddpmpp_cond"), "rb").read()
  cut = tmp_path / "network-snapshot-000100.pkl"
  cut.write_bytes(data[:len(data) // 2])
  with pytest.raises(WeightsFileError, match="truncated") as e:
    read_pickle(str(cut))
  assert EXPECTED in str(e.value)
  text = tmp_path / "notes.pkl"
  text.write_text("not a pickle at all")
  with pytest.raises(WeightsFileError, match="is not a pickle") as e:
    read_pickle(str(text))
  assert EXPECTED in str(e.value)
  zipped = tmp_path / "training-state-000100.pt"
  with zipfile.ZipFile(zipped, "w") as zf:
    zf.writestr("archive/data.pkl", b"")
  with pytest.raises(WeightsFileError, match="is a zip") as e:
    read_pickle(str(zipped))
  other = tmp_path / "other.pkl"
  other.write_bytes(pickle.dumps({"net": [1, 2]}))
  with pytest.raises(WeightsFileError, match="no 'ema' network"):
    read_pickle(str(other))
  with pytest.raises(MissingWeightsFileError, match="never downloads"):
    read_pickle(str(tmp_path / "absent.pkl"))


@pytest.mark.parametrize("precond,model,what", [("iDDPMPrecond", "DhariwalUNet", "iDDPM")])
def test_other_architectures_are_not_supported_yet(tmp_path, persistence, precond, model, what):
  net = Persistent(precond, dict(img_resolution=8, img_channels=3, label_dim=0, use_fp16=False,
                                 sigma_data=0.5, sigma_min=0, sigma_max=80.0,
                                 _modules=collections.OrderedDict(model=Persistent(model, {}))))
  path = tmp_path / f"{model}.pkl"
  path.write_bytes(pickle.dumps(dict(ema=net)))
  with pytest.raises(WeightsFileError, match=f"{what}.*not supported yet"):
    load_network(str(path))


# ------------------------------------------------------------------ synthetic pickles

TINY = dict(name="ddpmpp", model_channels=16, channel_mult=(1, 2), num_blocks=1,
            attn_resolutions=(4,), dropout=0.0)
TINY_KWARGS = dict(img_resolution=8, in_channels=1, out_channels=1, label_dim=0,
                   embedding_type="positional", encoder_type="standard",
                   decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1],
                   model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                   dropout=0.0)
PRECOND_ATTRS = {
    "EDMPrecond": dict(sigma_min=0, sigma_max=float("inf"), sigma_data=0.5),
    "VPPrecond": dict(beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5, sigma_min=0.0045,
                      sigma_max=152.0),
    "VEPrecond": dict(sigma_min=0.02, sigma_max=100),
}


def tiny_params(seed=0):
  """Random (not initial) weights of the tiny jaxdiff DDPM++, flat, numpy."""
  model = models.build_model(TINY, image_shape=(8, 8, 1))
  params = jax.eval_shape(lambda: step_lib.init_params(model, jax.random.PRNGKey(0),
                                                            (8, 8, 1), 0))
  rng = np.random.RandomState(seed)
  return model, {k: (0.2 * rng.standard_normal(v.shape)).astype(np.float32)
                 for k, v in weights.flatten(params).items()}


def _kind(path):
  """EDM's class of the module at a state-dict path (SongUNet's layout)."""
  leaf = path[-1]
  if len(path) == 1:
    return "ModuleDict" if leaf in ("enc", "dec") else "Linear"
  if len(path) == 2:
    return "GroupNorm" if leaf.endswith("aux_norm") else (
        "Conv2d" if leaf.endswith(("_conv", "aux_residual", "aux_skip")) else "UNetBlock")
  return "GroupNorm" if leaf.startswith("norm") else "Linear" if leaf == "affine" else "Conv2d"


def _module_state(kind, path, tensors, torch, attention=False):
  state = {"training": False, "_parameters": collections.OrderedDict(),
           "_buffers": collections.OrderedDict(), "_modules": collections.OrderedDict(),
           "_non_persistent_buffers_set": set(), "_forward_hooks": collections.OrderedDict()}
  for name, value in tensors.items():
    state["_parameters"][name] = torch.nn.Parameter(torch.from_numpy(value),
                                                    requires_grad=False)
  if kind == "UNetBlock":
    state.update(skip_scale=np.float64(np.sqrt(0.5)), adaptive_scale=False, dropout=0.0,
                 num_heads=1 if attention else 0)
  if kind == "GroupNorm":
    state.update(eps=1e-6, num_groups=min(32, len(tensors["weight"]) // 4))
  if kind == "Conv2d" and path[-1] in ("conv0", "skip") and path[-2].endswith(("_down", "_up")):
    state["_buffers"]["resample_filter"] = torch.full((1, 1, 2, 2), 0.25)
  return state


def torch_container(state, torch):
  """A torch.nn.ModuleDict holding `state` as its __dict__: torch pickles it (NEWOBJ of the
  class, then its state) as it pickles EDM's enc / dec."""
  module = torch.nn.ModuleDict.__new__(torch.nn.ModuleDict)
  object.__setattr__(module, "__dict__", state)
  return module


def official_structure(flat, precond, torch):
  """The pickled form of EDM's EDMPrecond/VPPrecond/VEPrecond(SongUNet) with these weights."""
  tree = {}
  for name, value in flat.items():
    key = song_unet.torch_name(name)
    if name.endswith(".kernel"):
      value = weights.hwio_to_oihw(value) if value.ndim == 4 else value.T
    *path, leaf = key.split(".")
    tree.setdefault(tuple(path), {})[leaf] = np.ascontiguousarray(value)
  modules = {(): Persistent("SongUNet", dict(_module_state("SongUNet", (), {}, torch),
                                             _init_kwargs=dict(TINY_KWARGS)))}
  for path in sorted({p[:i] for p in tree for i in range(1, len(p) + 1)}, key=len):
    kind = _kind(path)
    state = _module_state(kind, path, tree.get(path, {}), torch, path + ("qkv",) in tree)
    modules[path] = (torch_container(state, torch) if kind == "ModuleDict" else
                     Persistent(kind, state))
    parent = modules[path[:-1]]
    parent_state = parent.state if isinstance(parent, Persistent) else parent.__dict__
    parent_state["_modules"][path[-1]] = modules[path]
  modules[()].state["_modules"]["map_noise"] = Persistent(
      "PositionalEmbedding", dict(num_channels=16, max_positions=10000, endpoint=True))
  attrs = dict(img_resolution=8, img_channels=1, label_dim=0, use_fp16=False,
               **PRECOND_ATTRS[precond])
  state = dict(_module_state(precond, (), {}, torch), **attrs)
  state["_modules"]["model"] = modules[()]
  return Persistent(precond, state)


@pytest.mark.parametrize("precond", sorted(PRECOND_ATTRS))
def test_synthetic_official_pickle_round_trips(tmp_path, persistence, precond):
  torch = pytest.importorskip("torch")
  model, flat = tiny_params()
  path = tmp_path / "network-snapshot-000000.pkl"
  path.write_bytes(pickle.dumps(dict(ema=official_structure(flat, precond, torch),
                                     dataset_kwargs=dict(path="digits.zip"))))
  net = load_network(str(path))
  got = weights.flatten(net.converted.params)
  assert sorted(got) == sorted(flat)
  for k in flat:
    np.testing.assert_array_equal(got[k], flat[k], err_msg=k)
  assert net.converted.model_config["name"] == "ddpmpp"
  rng = np.random.RandomState(1)
  x = rng.standard_normal((3, 8, 8, 1)).astype(np.float32)
  sigma = np.asarray([0.01, 1.0, 50.0], np.float32)
  formulation = edm.PRECONDS[precond]
  apply_fn = lambda p, x, c, *_: model.apply({"params": p}, x, c)
  want = precond_lib.denoise(apply_fn, weights.unflatten(flat), x, sigma, precond=formulation)
  np.testing.assert_allclose(official_denoiser(str(path))(x, sigma), want, rtol=1e-5,
                             atol=1e-5)


def test_a_tensor_of_the_wrong_shape_is_named(tmp_path, persistence):
  torch = pytest.importorskip("torch")
  _, flat = tiny_params()
  flat["enc_8x8_block0.conv0.kernel"] = flat["enc_8x8_block0.conv0.kernel"][:, :, :, :8]
  del flat["dec_8x8_aux_conv.bias"]
  path = tmp_path / "bad.pkl"
  path.write_bytes(pickle.dumps(dict(ema=official_structure(flat, "EDMPrecond", torch))))
  with pytest.raises(WeightsFileError) as e:
    load_network(str(path))
  assert "enc.8x8_block0.conv0.weight" in str(e.value)
  assert "dec.8x8_aux_conv.bias" in str(e.value)


# ------------------------------------------------------------------ the workdir

def digits_config(num_classes=10):
  c = config_lib.load_config("digits_edm")
  c.data.num_classes = num_classes
  return c


def test_convert_writes_a_workdir_that_sampling_and_init_from_read(tmp_path):
  from jaxdiff import workdir as workdir_lib
  from jaxdiff.commands import sample
  from jaxdiff.train.experiment import Experiment
  source, wd = golden("ddpmpp_cond"), str(tmp_path / "converted")
  summary = convert(source, wd, digits_config())
  assert summary["status"] == "fresh"
  assert sorted(os.listdir(wd)) == ["checkpoints", "config.json", "convert.json", "recipe.py"]
  marker = json.load(open(os.path.join(wd, "convert.json")))
  assert marker["complete"] and marker["network"] == "EDMPrecond(SongUNet ddpmpp)"
  want = load_network(source).converted.params
  config = config_lib.workdir_config(wd)
  assert config.model.augment_dim == 9 and config.objective.formulation == "edm"
  state, step = sample.restore(Experiment(config), wd)
  assert step == 0
  for tree in (state.params, state.ema_params):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(tree), want)
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), want)
  ema, _ = workdir_lib.read_init_weights(wd, config, target)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(ema), want)
  # The workdir's own model (config.model, no interceptor) is the official network.
  g = np.load(OUTPUTS)
  model = models.build_model(config.model, image_shape=(8, 8, 1), num_classes=10)
  apply_fn = lambda p, x, c, labels, *_: model.apply({"params": p}, x, c, labels)
  d = precond_lib.denoise(apply_fn, want, g["ddpmpp_cond/x"], g["sigma"],
                          class_labels=g["ddpmpp_cond/class_labels"])
  assert_close_to_official(d, g["ddpmpp_cond/D"])
  # A rerun on the same file is recognised; anything else in the way is refused.
  assert convert(source, wd, digits_config())["status"] == "same"
  with pytest.raises(ConfigError, match="another file"):
    writer.workdir_status(wd, "0" * 64, config)
  other = tmp_path / "other"
  other.mkdir()
  (other / "notes.txt").write_text("mine")
  with pytest.raises(ConfigError, match="not a conversion of this file"):
    convert(source, str(other), digits_config())
  with pytest.raises(ConfigError, match=r"config.data.num_classes=0"):
    convert(source, str(tmp_path / "x"), digits_config(num_classes=0))


def test_default_config_names_the_training_data():
  net = load_network(golden("ddpmpp_cond"))
  c = writer.build_config(net)
  assert (c.data.name, c.data.tfds_name, c.data.image_size, c.data.channels,
          c.data.num_classes) == ("tfds", "digits_8x8", 8, 1, 10)
  assert c.objective.name == "edm" and c.model.name == "ddpmpp"
  net.dataset_kwargs = None
  net.precond.img_resolution, net.precond.img_channels = 32, 3
  assert writer.guess_dataset(net) == "cifar10"


def test_sampling_a_converted_workdir_equals_sampling_the_official_denoiser(tmp_path):
  """The same latents and labels through EDM's Heun sampler: the converted workdir's
  objective (jaxdiff's network, restored weights) and `official_denoiser` agree."""
  from jaxdiff import sampling
  from jaxdiff.commands import sample
  from jaxdiff.train.experiment import Experiment
  source, wd = golden("ddpmpp_cond"), str(tmp_path / "converted")
  convert(source, wd, digits_config())
  config = config_lib.workdir_config(wd)
  config.sample.num_steps = 6
  exp = Experiment(config)
  state, _ = sample.restore(exp, wd)
  latents = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
  labels = jax.nn.one_hot(jnp.arange(4) % 10, 10)
  ours = exp.objective.sample(state.ema_params, latents, labels, None, config.sample)
  official = official_denoiser(source)
  s = config.sample
  theirs = sampling.edm_sampler(lambda x, sigma: official(x, sigma, labels), latents,
                                num_steps=s.num_steps, sigma_min=s.sigma_min,
                                sigma_max=s.sigma_max, rho=s.rho)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-4, atol=1e-4)
