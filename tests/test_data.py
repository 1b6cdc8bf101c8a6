"""Data: TFDS (mocked), image folders, stacked MNIST, epoch shuffling, resume and streaming.

No test reads real datasets: TFDS goes through `tfds.testing.mock_data`, folders are made in
temporary directories, and the decode cache points at a temporary directory too.
"""
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxgan import data as data_lib
from jaxgan.config import base_config


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXGAN_CACHE_DIR", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- TFDS (mocked)


class _LabelledSource:
    """A data source whose image i is filled with 20 * label(i), label(i) = (7 * i) % 10."""

    def __init__(self, n, shape=(12, 10, 1)):
        self.n, self.shape = n, shape
        self.dataset_info = types.SimpleNamespace(features={"image": None, "label": None})

    def __len__(self):
        return self.n

    def _one(self, i):
        label = (7 * i) % 10
        return {"image": np.full(self.shape, 20 * label, np.uint8), "label": np.int64(label)}

    def __getitem__(self, i):
        return self._one(i)

    def __getitems__(self, idx):
        return [self._one(i) for i in idx]


def _fake_prepared(root, name="mnist", version="3.0.1"):
    """The marker `find_prepared` looks for; mock_data supplies the records."""
    d = root / name / version
    d.mkdir(parents=True)
    (d / "dataset_info.json").write_text("{}")
    return str(root)


def test_tfds_labels_line_up_with_images(tmp_path):
    import tensorflow_datasets as tfds
    root = _fake_prepared(tmp_path / "tfds")
    fake = lambda *a, **k: _LabelledSource(2500)  # noqa: E731  (> one decode chunk)
    with tfds.testing.mock_data(as_data_source_fn=fake):
        ds = data_lib.load_tfds("mnist", "train", root, 8, 1)
    assert ds.images.shape == (2500, 8, 8, 1) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.labels, (7 * np.arange(2500)) % 10)
    # a constant 12x10 image stays constant through center crop + resize
    np.testing.assert_array_equal(ds.images[:, 4, 4, 0], 20 * ds.labels)


def test_tfds_random_mock_resizes_crops_and_converts(tmp_path):
    import tensorflow_datasets as tfds
    root = _fake_prepared(tmp_path / "tfds", "cifar10", "3.0.2")
    _fake_prepared(tmp_path / "tfds", "celeb_a", "2.1.0")
    with tfds.testing.mock_data(num_examples=6):
        cifar = data_lib.load_tfds("cifar10", "train", root, 16, 1)
        celeb = data_lib.load_tfds("celeb_a", "train", root, 16, 3)  # 218x178: center crop
    assert cifar.images.shape == (6, 16, 16, 1) and cifar.labels.shape == (6,)
    assert celeb.images.shape == (6, 16, 16, 3) and celeb.labels is None


def test_tfds_decoded_arrays_are_cached(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds
    root = _fake_prepared(tmp_path / "tfds")
    fake = lambda *a, **k: _LabelledSource(30)  # noqa: E731
    with tfds.testing.mock_data(as_data_source_fn=fake):
        first = data_lib.load_tfds("mnist", "train", root, 8, 1)

    def boom(*a, **k):
        raise AssertionError("decoded again instead of read from the cache")
    monkeypatch.setattr(data_lib, "decode_source", boom)
    second = data_lib.load_tfds("mnist", "train", root, 8, 1)
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)


def test_unwritable_cache_is_not_fatal(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("JAXGAN_CACHE_DIR", str(blocker / "cache"))
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / "a.png")
    assert data_lib.load_folder(str(folder), 4, 3).num_examples == 1


def test_missing_dataset_fails_fast_with_the_fix(tmp_path):
    empty = str(tmp_path / "nothing_here")
    start = time.perf_counter()
    with pytest.raises(data_lib.DataError) as e:
        data_lib.load_tfds("cifar10", "train", empty, 32, 3)
    assert time.perf_counter() - start < 5.0
    msg = str(e.value)
    assert "\n" not in msg
    assert "'cifar10'" in msg and empty in msg
    assert 'pip install "jaxgan[prepare]"' in msg and f"tfds build cifar10 --data_dir {empty}" in msg


def test_unknown_tfds_name_suggests_the_nearest(tmp_path):
    with pytest.raises(data_lib.DataError, match="did you mean 'mnist'"):
        data_lib.load_tfds("mnsit", "train", str(tmp_path), 28, 1)


# ----------------------------------------------------------------------------- image folders


def _image_folder(root):
    """4 readable RGB-or-grey images in nested folders, 1 corrupt JPG, 1 non-image file."""
    (root / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (20, 20), (255, 0, 0)).save(root / "red.jpg", quality=95)
    Image.new("RGB", (12, 12), (0, 0, 255)).save(root / "a" / "blue.png")
    Image.new("L", (16, 16), 128).save(root / "a" / "b" / "grey.png")
    wide = Image.new("RGB", (30, 10), (255, 0, 0))           # red sides ...
    wide.paste((0, 255, 0), (10, 0, 20, 10))                  # ... green center square
    wide.save(root / "a" / "b" / "wide.bmp")
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (root / "notes.txt").write_text("ignored")


def test_folder_recursive_skips_corrupt_and_converts(tmp_path):
    _image_folder(tmp_path / "imgs")
    ds = data_lib.load_folder(str(tmp_path / "imgs"), 8, 3)
    assert ds.images.shape == (4, 8, 8, 3) and ds.skipped == 1
    # sorted order: a/b/grey.png, a/b/wide.bmp, a/blue.png, red.jpg
    grey, wide, blue, red = ds.images.astype(int)
    assert np.all(grey == 128)                                  # grey among RGB: R = G = B
    assert np.all(np.abs(wide - [0, 255, 0]) <= 2)             # center crop of a 30x10 image
    assert np.all(blue == [0, 0, 255])
    assert np.all(np.abs(red - [255, 0, 0]) <= 4)              # JPEG rounding
    assert data_lib.load_folder(str(tmp_path / "imgs"), 8, 1).images.shape == (4, 8, 8, 1)


def test_folder_through_load_and_cache(tmp_path, monkeypatch):
    _image_folder(tmp_path / "imgs")
    c = base_config()
    c.data.name, c.data.path, c.data.image_size, c.data.channels = "folder", str(tmp_path / "imgs"), 8, 3
    c.train.batch_size = 2
    first = data_lib.load(c)
    monkeypatch.setattr(data_lib, "_decode_file", lambda *a: pytest.fail("decoded again"))
    second = data_lib.load(c)
    np.testing.assert_array_equal(first.images, second.images)
    assert second.skipped == 1


def test_folder_errors_are_clear(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(data_lib.DataError, match="no images"):
        data_lib.load_folder(str(tmp_path / "empty"), 8, 3)
    with pytest.raises(data_lib.DataError, match="is not a folder"):
        data_lib.load_folder(str(tmp_path / "missing"), 8, 3)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"garbage")
    with pytest.raises(data_lib.DataError, match="unreadable"):
        data_lib.load_folder(str(tmp_path / "bad"), 8, 3)


# ----------------------------------------------------------------------------- stacked MNIST


def test_digits_are_scikit_learns_with_or_without_its_import(monkeypatch):
    """digits_arrays reads load_digits' own CSV without importing scikit-learn (a 2 s import);
    where that file cannot be found it calls load_digits. Both give load_digits' arrays."""
    from sklearn.datasets import load_digits
    expected = load_digits()
    images, labels = data_lib.digits_arrays()
    np.testing.assert_array_equal(images, expected.images)
    np.testing.assert_array_equal(labels, expected.target)
    assert images.shape == (1797, 8, 8) and labels.dtype == np.int32
    monkeypatch.setattr(data_lib.importlib.util, "find_spec", lambda name: None)
    images, labels = data_lib.digits_arrays()
    np.testing.assert_array_equal(images, expected.images)
    np.testing.assert_array_equal(labels, expected.target)


def test_stacked_mnist_labels_and_channels(tmp_path):
    digits = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 1), np.uint8)
    ds = data_lib.stack_digits(digits, np.arange(10), 2000, seed=3)
    assert ds.images.shape == (2000, 4, 4, 3)
    r, g, b = (ds.images[:, 0, 0, c].astype(int) for c in range(3))
    np.testing.assert_array_equal(ds.labels, 100 * r + 10 * g + b)
    assert len(np.unique(ds.labels)) > 850                      # 1000 modes, nearly all drawn
    again = data_lib.stack_digits(digits, np.arange(10), 2000, seed=3)
    np.testing.assert_array_equal(ds.labels, again.labels)      # reproducible from the seed
    assert not np.array_equal(ds.labels, data_lib.stack_digits(digits, np.arange(10), 2000, 4).labels)


def test_stacked_mnist_through_load(tmp_path):
    import tensorflow_datasets as tfds
    root = _fake_prepared(tmp_path / "tfds")
    c = base_config()
    c.data.name, c.data.data_dir, c.data.image_size, c.data.channels = "stacked_mnist", root, 16, 3
    c.data.num_examples = 300
    fake = lambda *a, **k: _LabelledSource(50, (28, 28, 1))  # noqa: E731
    with tfds.testing.mock_data(as_data_source_fn=fake):
        ds = data_lib.load(c)
    assert ds.images.shape == (300, 16, 16, 3)
    np.testing.assert_array_equal(ds.images[:, 8, 8, :].astype(int) // 20,
                                  np.stack([ds.labels // 100, ds.labels // 10 % 10,
                                            ds.labels % 10], 1))


# ----------------------------------------------------------------------------- order, resume, streaming


def _draw(pos, key, batch, steps):
    fn = jax.jit(data_lib.next_indices, static_argnums=2)
    out = []
    for _ in range(steps):
        idx, pos = fn(pos, key, batch)
        out.append(np.asarray(idx))
    return np.stack(out), pos


def test_each_epoch_covers_every_example_once():
    key = jax.random.PRNGKey(0)
    idx, pos = _draw(data_lib.init_position(key, 12), key, 4, 9)   # 3 epochs of 3 batches
    epochs = idx.reshape(3, 12)
    for e in epochs:
        assert sorted(e.tolist()) == list(range(12))
    assert not np.array_equal(epochs[0], epochs[1])
    assert int(pos.epoch) == 2
    idx, _ = _draw(data_lib.init_position(key, 10), key, 4, 4)     # tail of 2 dropped
    assert len(set(idx[:2].ravel().tolist())) == 8 and len(set(idx[2:].ravel().tolist())) == 8


def test_resume_continues_the_data_order():
    key = jax.random.PRNGKey(1)
    full, _ = _draw(data_lib.init_position(key, 10), key, 3, 8)
    _, saved = _draw(data_lib.init_position(key, 10), key, 3, 5)
    saved = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), saved)   # as if restored
    rest, _ = _draw(saved, key, 3, 3)
    np.testing.assert_array_equal(full[5:], rest)


def test_streaming_equals_device_gather_and_resumes():
    n, batch, n_critic = 11, 3, 2
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)
    key = jax.random.PRNGKey(2)
    resident = data_lib.device_data(data_lib.Dataset("x", images=images))

    @jax.jit
    def gather(pos):
        out = []
        for i in range(n_critic):
            x, pos, _ = data_lib.next_batch(pos, resident, key, key, batch)
            out.append(x)
        return jnp.stack(out), pos

    @jax.jit
    def streamed(pos, real):
        out = []
        for i in range(n_critic):
            x, pos, _ = data_lib.next_batch(pos, {"real": real}, key, key, batch, i)
            out.append(x)
        return jnp.stack(out), pos

    pos_a = pos_b = data_lib.init_position(key, n)
    with data_lib.Prefetcher(images, key, batch, n_critic) as stream:
        for _ in range(7):                                      # crosses 3 epoch boundaries
            want, pos_a = gather(pos_a)
            real = next(stream)
            assert real.shape == (n_critic, batch, 2, 2, 1) and real.dtype == jnp.uint8
            got, pos_b = streamed(pos_b, real)
            np.testing.assert_array_equal(np.asarray(want), np.asarray(got))
            assert (int(pos_a.epoch), int(pos_a.cursor)) == (int(pos_b.epoch), int(pos_b.cursor))
    want, _ = gather(pos_a)
    with data_lib.Prefetcher(images, key, batch, n_critic, steps=2, epoch=int(pos_b.epoch),
                             cursor=int(pos_b.cursor)) as stream:  # resumed from the state
        real = next(stream)
    assert real.shape == (2, n_critic, batch, 2, 2, 1)
    np.testing.assert_array_equal(np.asarray(want), np.asarray(data_lib.images_lib.to_model_range(real[0])))


def test_device_budget():
    ds = data_lib.Dataset("x", images=np.zeros((4, 512, 512, 4), np.uint8))   # 4 MiB
    c = base_config()
    c.data.device_budget_mb = 8
    assert data_lib.fits_device(ds, c)
    c.data.device_budget_mb = 3
    assert not data_lib.fits_device(ds, c)
