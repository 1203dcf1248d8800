"""Prepared tfds datasets: build through the real builder, read back sharded, fail clearly."""
import io
import json
import os
import tarfile
import zipfile

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxdiff import config as config_lib
from jaxdiff import parallel, prepare_data
from jaxdiff.data import builders, images, pipeline, sources, tfds_source

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_IMAGES, RES, N_CLASSES = 24, 8, 3


def _png_folder(root, n=N_IMAGES, res=RES, seed=0, labels=True):
  """EDM dataset_tool layout: 00000/img%08d.png plus dataset.json labels."""
  rng = np.random.default_rng(seed)
  images, label_list = [], []
  os.makedirs(os.path.join(root, "00000"), exist_ok=True)
  for i in range(n):
    img = rng.integers(0, 256, (res, res, 3), dtype=np.uint8)
    name = f"00000/img{i:08d}.png"
    Image.fromarray(img).save(os.path.join(root, name))
    images.append(img)
    label_list.append([name, i % N_CLASSES])
  if labels:
    with open(os.path.join(root, "dataset.json"), "w") as f:
      json.dump({"labels": label_list}, f)
  return np.stack(images), np.array([l for _, l in label_list])


def _data_config(data_dir, name="tiny", num_classes=N_CLASSES, image_size=RES):
  return ml_collections.ConfigDict(dict(name="tfds", tfds_name=name, data_dir=str(data_dir),
                                        num_classes=num_classes, image_size=image_size,
                                        channels=3, random_flip=False))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """A small real tfds ArrayRecord dataset built from generated PNGs by the CLI's code path."""
  root = tmp_path_factory.mktemp("tfds")
  images, labels = _png_folder(str(root / "src"))
  path = prepare_data.prepare("tiny", str(root / "data"), source=str(root / "src"))
  return root, path, images, labels


def test_folder_import_round_trips_exactly(prepared):
  root, path, images, labels = prepared
  assert path == builders.dataset_dir(str(root / "data"), "tiny")
  ds = tfds_source.open_dataset(_data_config(root / "data"))
  assert ds.num_examples == N_IMAGES and ds.example_shape == (RES, RES, 3)
  raw = ds.get_uint8(np.arange(N_IMAGES))
  np.testing.assert_array_equal(raw["image"], images)       # sorted file order, exact pixels
  np.testing.assert_array_equal(raw["label"], labels)
  batch = ds.get(np.array([5, 2]))
  assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
  np.testing.assert_allclose(batch["image"], images[[5, 2]] / 127.5 - 1.0, atol=1e-6)
  assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  meta = json.load(open(os.path.join(path, "metadata.json")))["jaxdiff"]
  assert meta["num_classes"] == N_CLASSES and meta["format"] == builders.FORMAT


def test_two_hosts_read_disjoint_halves_of_each_global_batch(prepared):
  root, _, _, _ = prepared
  ds = tfds_source.open_dataset(_data_config(root / "data"))
  B = 8
  whole = pipeline.StepBatcher(ds, B, seed=3, process_slice=(0, B), random_flip=True)
  hosts = [pipeline.StepBatcher(ds, B, seed=3, process_slice=s, random_flip=True)
           for s in ((0, B // 2), (B // 2, B))]
  seen = []
  for step in range(7):  # 56 draws over 24 images: crosses epoch boundaries
    parts = [h(step) for h in hosts]
    full = whole(step)
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), full["image"])
    np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts]), full["label"])
    idx = pipeline.global_batch_indices(3, step, B, N_IMAGES)
    assert len(set(idx[:B // 2]) & set(idx[B // 2:])) == 0  # disjoint within the step
    seen.extend(idx)
    # Deterministic from (seed, step): a fresh batcher (a resumed run) gives the same rows.
    again = pipeline.StepBatcher(ds, B, seed=3, process_slice=(B // 2, B), random_flip=True)
    np.testing.assert_array_equal(again(step)["image"], parts[1]["image"])
  # Each epoch visits every image once.
  assert sorted(seen[:N_IMAGES]) == list(range(N_IMAGES))
  # The global-array assembly puts the host halves on their devices (one process here).
  mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}))
  glob = parallel.to_global(whole(0), mesh, B)
  np.testing.assert_array_equal(np.asarray(glob["image"]), whole(0)["image"])


def test_flips_mirror_width_only(prepared):
  root, _, images, _ = prepared
  ds = tfds_source.open_dataset(_data_config(root / "data"))
  plain = pipeline.StepBatcher(ds, 8, seed=1, process_slice=(0, 8))(0)["image"]
  flipped = pipeline.StepBatcher(ds, 8, seed=1, process_slice=(0, 8), random_flip=True)(0)["image"]
  same = np.all(plain == flipped, axis=(1, 2, 3))
  mirrored = np.all(plain[:, :, ::-1] == flipped, axis=(1, 2, 3))
  assert np.all(same | mirrored) and mirrored.any() and same.any()


def test_zip_import_equals_folder_import(prepared, tmp_path):
  root, _, images, labels = prepared
  archive = tmp_path / "tiny.zip"
  with zipfile.ZipFile(archive, "w") as zf:
    for dirpath, _, files in os.walk(root / "src"):
      for f in files:
        full = os.path.join(dirpath, f)
        zf.write(full, os.path.relpath(full, root / "src"))
  prepare_data.prepare("tiny_zip", str(tmp_path / "data"), source=str(archive))
  ds = tfds_source.open_dataset(_data_config(tmp_path / "data", "tiny_zip"))
  raw = ds.get_uint8(np.arange(N_IMAGES))
  np.testing.assert_array_equal(raw["image"], images)
  np.testing.assert_array_equal(raw["label"], labels)


def test_mixed_image_sizes_fail_naming_the_file(tmp_path):
  _png_folder(str(tmp_path / "src"), n=3, labels=False)
  Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "src" / "00000" / "odd.png")
  with pytest.raises(builders.DatasetFormatError, match=r"odd\.png.*\(6, 6, 3\).*\(8, 8, 3\)"):
    prepare_data.prepare("mixed", str(tmp_path / "data"), source=str(tmp_path / "src"))
  # With a resolution the same folder is resized and imports fine.
  path = prepare_data.prepare("mixed4", str(tmp_path / "data"), source=str(tmp_path / "src"),
                              resolution=4)
  assert json.load(open(os.path.join(path, "metadata.json")))["jaxdiff"]["shape"] == [4, 4, 3]


def test_wrong_dtype_and_label_fail_clearly():
  with pytest.raises(builders.DatasetFormatError, match="dtype is float32, expected uint8"):
    builders.check_example("k", {"image": np.zeros((8, 8, 3), np.float32)}, (8, 8, 3), 0)
  with pytest.raises(builders.DatasetFormatError, match=r"shape is \(8, 8\), expected \(8, 8, 3\)"):
    builders.check_example("k", {"image": np.zeros((8, 8), np.uint8)}, (8, 8, 3), 0)
  with pytest.raises(builders.DatasetFormatError, match=r"label 7 is outside \[0, 3\)"):
    builders.check_example("k", {"image": np.zeros((8, 8, 3), np.uint8), "label": 7},
                           (8, 8, 3), 3)


def test_config_mismatches_fail_at_start(prepared):
  root, _, _, _ = prepared
  with pytest.raises(ValueError, match=r"shape \(8, 8, 3\).*expects \(16, 16, 3\)"):
    pipeline.make_dataset(_data_config(root / "data", image_size=16))
  with pytest.raises(builders.DatasetFormatError, match="num_classes=10 but .* has 3 classes"):
    tfds_source.open_dataset(_data_config(root / "data", num_classes=10))
  ds, _ = pipeline.make_dataset(_data_config(root / "data", num_classes=0))
  assert set(ds.get([0, 1])) == {"image"}  # unconditional recipes get no labels


def test_missing_dataset_names_dir_and_prepare_command(tmp_path):
  with pytest.raises(tfds_source.MissingDatasetError) as e:
    tfds_source.open_dataset(_data_config(tmp_path / "nowhere", "cifar10", 0, 32))
  msg = str(e.value)
  assert "'cifar10'" in msg and str(tmp_path / "nowhere") in msg
  assert f"python -m jaxdiff.prepare_data --dataset=cifar10 --data_dir={tmp_path / 'nowhere'}" in msg
  assert isinstance(e.value, FileNotFoundError)  # main.py turns it into `error: ...`, exit 2


def test_cifar10_binary_parser(tmp_path):
  n = 4  # records per file (the real archive has 10,000)
  rng = np.random.default_rng(0)
  tar_path = tmp_path / "cifar-10-binary.tar.gz"
  expected = []
  with tarfile.open(tar_path, "w:gz") as tar:
    for name in reversed(sources.CIFAR10_TRAIN_FILES):  # archive order must not matter
      labels = rng.integers(0, 10, n, dtype=np.uint8)
      chw = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
      data = np.concatenate([labels[:, None], chw.reshape(n, -1)], axis=1).tobytes()
      info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
      expected.insert(0, (chw.transpose(0, 2, 3, 1), labels))
  got = list(sources.cifar10_binary_examples(str(tar_path), records_per_file=n))
  assert len(got) == 5 * n
  images = np.stack([ex["image"] for _, ex in got])
  np.testing.assert_array_equal(images, np.concatenate([e[0] for e in expected]))
  np.testing.assert_array_equal([ex["label"] for _, ex in got],
                                np.concatenate([e[1] for e in expected]))
  with pytest.raises(builders.DatasetFormatError, match="10000 records"):
    next(sources.cifar10_binary_examples(str(tar_path)))


def test_downsampled_imagenet_npz_parser(tmp_path):
  rng = np.random.default_rng(0)
  data = rng.integers(0, 256, (5, 3 * 8 * 8), dtype=np.uint8)
  labels = np.array([1, 1000, 7, 3, 2])
  buf = io.BytesIO()
  np.savez(buf, data=data, labels=labels)
  archive = tmp_path / "Imagenet64_train_part1_npz.zip"
  with zipfile.ZipFile(archive, "w") as zf:
    zf.writestr("train_data_batch_1.npz", buf.getvalue())
  got = list(sources.imagenet_npz_examples([str(archive)], size=8))
  np.testing.assert_array_equal(got[1][1]["image"], data[1].reshape(3, 8, 8).transpose(1, 2, 0))
  assert [ex["label"] for _, ex in got] == [0, 999, 6, 2, 1]


def test_transforms_shapes():
  img = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
  assert images.center_crop_adm(img, 8).shape == (8, 8, 3)
  assert images.center_crop_edm(img, 8).shape == (8, 8, 3)
  with pytest.raises(builders.DatasetFormatError, match="not square"):
    images.resize_lanczos(img, 8)
  face = np.zeros((218, 178, 3), np.uint8)
  face[39:179, 19:159] = 255  # the centred 140x140 crop CelebA-64 keeps
  np.testing.assert_array_equal(images.center_crop_celeba(face, 16), 255)


def test_prefetcher_gives_the_same_batches_and_restarts():
  calls = []

  def fn(step):
    calls.append(step)
    if step == 9:
      raise RuntimeError("bad batch 9")
    return {"x": np.full(3, step)}

  pf = pipeline.Prefetcher(fn, start=2, depth=2)
  for step in range(2, 6):
    np.testing.assert_array_equal(pf.get(step)["x"], np.full(3, step))
  np.testing.assert_array_equal(pf.get(7)["x"], np.full(3, 7))  # a jump restarts the worker
  np.testing.assert_array_equal(pf.get(8)["x"], np.full(3, 8))
  with pytest.raises(RuntimeError, match="bad batch 9"):
    pf.get(9)
  pf.close()
  assert calls[0] == 2 and pf.wait_seconds >= 0


def _load_config(name, arg="smoke"):
  return config_lib.load_config(f"{name}:{arg}")


def test_cifar10_smoke_recipe_trains_through_the_tfds_path(tmp_path):
  """cifar10_edm:smoke: generated data written and read by the tfds builder path.
  (imagenet64_edm:smoke runs end to end, with FID, in tests/test_fid.py.)"""
  from jaxdiff.train import loop
  c = _load_config("cifar10_edm")
  c.data.data_dir = str(tmp_path / "data")  # fresh: the dataset is generated on first use
  mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1}),
                            devices=jax.devices()[:1])  # one device: the cheapest compile
  summary = loop.train(c, str(tmp_path / "run"), mesh=mesh)
  assert summary["step"] == c.train.num_steps and np.isfinite(summary["final_loss"])
  assert os.path.exists(os.path.join(builders.dataset_dir(c.data.data_dir, c.data.tfds_name),
                                     "dataset_info.json"))
  assert summary["input_wait_seconds"] >= 0
