"""Inception preprocessing, network shapes, torch-free .pth reading and weight loading.

No torch here: .pth files are written by a tiny pickler that emits the same opcodes torch.save
does (zip and legacy formats). scripts/inception_parity.py checks against real torch.
"""

import collections
import io
import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxgan.metrics import inception as inc

# ------------------------------------------------------------------------------------------
# A torch-free writer of torch.save files (test helper)
# ------------------------------------------------------------------------------------------

_DTYPE_TO_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage",
                     np.dtype(np.float64): "DoubleStorage"}


class _Global:
    """Stands for a torch global (e.g. torch._utils._rebuild_tensor_v2) in the pickle stream."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle insists reduce functions are callable
        raise NotImplementedError


class _Storage:
    def __init__(self, key, flat):
        self.key, self.flat = key, np.ascontiguousarray(flat)


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class _TorchPickler(pickle._Pickler):
    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, f, legacy):
        super().__init__(f, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            kind = _Global("torch", _DTYPE_TO_STORAGE[obj.flat.dtype])
            pid = ("storage", kind, obj.key, "cpu", obj.flat.size)
            return pid + (None,) if self.legacy else pid
        return None

    def _save_global_marker(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    def _save_tensor(self, obj):
        args = (obj.storage, obj.offset, obj.size, obj.stride, False, collections.OrderedDict())
        self.save_reduce(_Global("torch._utils", "_rebuild_tensor_v2"), args, obj=obj)

    dispatch[_Global] = _save_global_marker
    dispatch[_Tensor] = _save_tensor


def _as_torch_objects(state_dict):
    out, storages = collections.OrderedDict(), {}
    for i, (name, value) in enumerate(state_dict.items()):
        if isinstance(value, _Tensor):
            out[name] = value
            storages[value.storage.key] = value.storage
            continue
        value = np.asarray(value)
        storage = _Storage(str(i), value.reshape(-1))
        strides = tuple(s // value.itemsize for s in np.ascontiguousarray(value).strides)
        out[name] = _Tensor(storage, 0, value.shape, strides)
        storages[storage.key] = storage
    return out, storages


def write_fake_pth(path, state_dict, legacy=False):
    """torch.save(state_dict, path) for numpy arrays (or _Tensor views), without torch."""
    obj, storages = _as_torch_objects(state_dict)
    buf = io.BytesIO()
    _TorchPickler(buf, legacy).dump(obj)
    if not legacy:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", buf.getvalue())
            zf.writestr("archive/byteorder", "little")
            for key, s in storages.items():
                zf.writestr(f"archive/data/{key}", s.flat.tobytes())
            zf.writestr("archive/version", "3\n")
        return
    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True}, f, protocol=2)
        f.write(buf.getvalue())
        keys = sorted(storages)
        pickle.dump(keys, f, protocol=2)
        for key in keys:
            f.write(np.int64(storages[key].flat.size).tobytes())
            f.write(storages[key].flat.tobytes())


def variables_to_state_dict(variables):
    """Inverse of inc.state_dict_to_variables: Flax variables -> torch key layout."""
    sd = collections.OrderedDict()
    for key, value in traverse_util.flatten_dict(variables).items():
        value = np.asarray(value)
        collection, *mod, leaf = key
        if mod == ["fc"]:
            sd["fc.weight" if leaf == "kernel" else "fc.bias"] = value.T if leaf == "kernel" else value
        elif leaf == "kernel":
            sd[".".join(mod) + ".weight"] = value.transpose(3, 2, 0, 1)
        else:
            name = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
            sd[".".join(mod) + "." + name[leaf]] = value
            if leaf == "mean":
                sd[".".join(mod) + ".num_batches_tracked"] = np.array(0, np.int64)
    return sd


# ------------------------------------------------------------------------------------------
# Preprocessing
# ------------------------------------------------------------------------------------------


def _tf1_resize_by_loops(img, out_h, out_w):
    h, w = img.shape
    sy, sx = np.float32(h / out_h), np.float32(w / out_w)
    out = np.zeros((out_h, out_w), np.float64)
    for i in range(out_h):
        y = np.float32(i) * sy
        y0 = int(np.floor(y)); y1 = min(y0 + 1, h - 1); dy = y - y0
        for j in range(out_w):
            x = np.float32(j) * sx
            x0 = int(np.floor(x)); x1 = min(x0 + 1, w - 1); dx = x - x0
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * dx
            bot = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * dx
            out[i, j] = top + (bot - top) * dy
    return out


def _resize(img2d, size, mode):
    x = jnp.asarray(img2d, jnp.float32)[None, :, :, None]
    return np.asarray(inc.resize_bilinear(x, size, mode))[0, :, :, 0]


def test_tf1_resize_matches_hand_computed_2x2_to_3x3():
    got = _resize([[0.0, 10.0], [20.0, 30.0]], (3, 3), "tf1")
    # Source coordinate = dst * 2/3 (no half-pixel shift); the last row/column clamp.
    expected = [[0, 20 / 3, 10], [40 / 3, 20, 70 / 3], [20, 80 / 3, 30]]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_tf1_downsampling_picks_samples_without_averaging():
    img = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_array_equal(_resize(img, (2, 2), "tf1"), img[::2, ::2])


def test_tf1_resize_matches_loop_reference_on_random_data():
    img = np.random.default_rng(0).uniform(0, 255, (5, 7)).astype(np.float32)
    np.testing.assert_allclose(_resize(img, (9, 4), "tf1"), _tf1_resize_by_loops(img, 9, 4),
                               rtol=1e-6, atol=1e-4)


def test_pytorch_fid_resize_uses_half_pixel_centres():
    a, b = 10.0, 50.0
    got = _resize([[a, b]], (1, 4), "pytorch_fid")
    np.testing.assert_allclose(got[0], [a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b], rtol=1e-6)


def test_preprocess_range_grey_to_rgb_and_identity_at_299():
    img = np.zeros((1, 299, 299, 1), np.uint8)
    img[0, :, 150:] = 255
    x = np.asarray(inc.preprocess(jnp.asarray(img)))
    assert x.shape == (1, 299, 299, 3) and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 127 / 128  # (x - 128) / 128, no resize blur at 299
    np.testing.assert_array_equal(x[..., 0], x[..., 2])
    y = np.asarray(inc.preprocess(jnp.asarray(img), resize="pytorch_fid"))
    assert y.min() == -1.0 and y.max() == 1.0  # x / 255 * 2 - 1


def test_preprocess_rejects_float_images_and_names_the_fix():
    with pytest.raises(TypeError, match=r"uint8.*astype\(np.uint8\)"):
        inc.preprocess(jnp.zeros((1, 8, 8, 3), jnp.float32))
    with pytest.raises(ValueError, match="NHWC"):
        inc.preprocess(jnp.zeros((1, 3, 8, 8), jnp.uint8))


def test_avg_pool_branch_ignores_padding():
    # TF's avg_pool (count_include_pad=False): a constant map stays constant, corners included.
    out = inc._avg_pool_same(jnp.ones((1, 4, 5, 2)))
    np.testing.assert_allclose(np.asarray(out), 1.0)


# ------------------------------------------------------------------------------------------
# Network and feature extraction (random weights)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def variables():
    return inc.init_inception_params(0)


def test_extract_features_shapes_padding_and_iterables(variables):
    imgs = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    pool, logits = inc.extract_features(variables, imgs, batch_size=2)
    assert pool.shape == (3, 2048) and logits.shape == (3, 1008)
    assert pool.dtype == logits.dtype == np.float32
    assert np.isfinite(pool).all() and np.isfinite(logits).all() and pool.std() > 0
    compiled = inc._forward._cache_size()
    # Same images as an iterable of uneven chunks: same features, no new compilation.
    pool2, logits2 = inc.extract_features(variables, iter([imgs[:1], imgs[1:]]), batch_size=2)
    np.testing.assert_allclose(pool2, pool, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits2, logits, rtol=1e-5, atol=1e-5)
    assert inc._forward._cache_size() == compiled
    # Unbiased logits are pool @ W; fc_bias=True adds the bias.
    w = np.asarray(variables["params"]["fc"]["kernel"])
    b = np.asarray(variables["params"]["fc"]["bias"])
    np.testing.assert_allclose(logits, pool @ w, rtol=1e-4, atol=1e-4)
    _, biased = inc.extract_features(variables, imgs[:2], batch_size=2, fc_bias=True)
    np.testing.assert_allclose(biased, logits[:2] + b, rtol=1e-4, atol=1e-4)


def test_grey_images_equal_repeated_rgb(variables):
    grey = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 1), dtype=np.uint8)
    pool_g, _ = inc.extract_features(variables, grey, batch_size=2)
    pool_rgb, _ = inc.extract_features(variables, np.repeat(grey, 3, axis=-1), batch_size=2)
    np.testing.assert_allclose(pool_g, pool_rgb, rtol=1e-5, atol=1e-6)


def test_extract_features_errors_name_the_fix(variables):
    with pytest.raises(TypeError, match="uint8"):
        inc.extract_features(variables, np.zeros((2, 32, 32, 3), np.float32), batch_size=2)
    with pytest.raises(ValueError, match="no images"):
        inc.extract_features(variables, iter([]), batch_size=2)


# ------------------------------------------------------------------------------------------
# .pth reading and weight loading
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_read_pth_rebuilds_tensors_with_strides_offsets_and_scalars(tmp_path, legacy):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    shared = _Storage("shared", np.arange(10, dtype=np.float32) * 0.5)
    sd = collections.OrderedDict(
        a=a,
        transposed=_Tensor(shared, 0, (3, 2), (1, 3)),  # a non-contiguous view
        offset=_Tensor(shared, 6, (2, 2), (2, 1)),  # same storage, with an offset
        step=np.array(7, np.int64),
        d=np.array([1.5, -2.0]),
    )
    path = tmp_path / "tiny.pth"
    write_fake_pth(path, sd, legacy=legacy)
    out = inc.read_pth(path)
    assert list(out) == list(sd)
    np.testing.assert_array_equal(out["a"], a)
    np.testing.assert_array_equal(out["transposed"], shared.flat[:6].reshape(2, 3).T)
    np.testing.assert_array_equal(out["offset"], shared.flat[6:10].reshape(2, 2))
    assert out["step"] == 7 and out["step"].dtype == np.int64
    assert out["d"].dtype == np.float64


def test_read_pth_refuses_arbitrary_callables(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(Evil(), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        inc.read_pth(path)


def test_load_inception_params_converts_pth_and_caches_npz(tmp_path, variables):
    sd = variables_to_state_dict(variables)
    path = tmp_path / inc.WEIGHTS_FILENAME
    write_fake_pth(path, sd)
    loaded = inc.load_inception_params(tmp_path, download=False)
    assert (tmp_path / inc.WEIGHTS_FILENAME).with_suffix(".npz").exists()
    cached = inc.load_inception_params(tmp_path, download=False)
    for tree in (loaded, cached):
        assert jax.tree.structure(tree) == jax.tree.structure(variables)
        for x, y in zip(jax.tree.leaves(tree), jax.tree.leaves(variables)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_state_dict_with_wrong_shapes_is_rejected(variables):
    sd = variables_to_state_dict(variables)
    sd["fc.weight"] = np.zeros((10, 2048), np.float32)
    with pytest.raises(ValueError, match="fc/kernel"):
        inc.state_dict_to_variables(sd)


def test_missing_weights_offline_raises_one_line_error_naming_the_fix(tmp_path, monkeypatch):
    with pytest.raises(inc.WeightsNotFoundError) as e:
        inc.load_inception_params(tmp_path, download=False)
    msg = str(e.value)
    assert "\n" not in msg and inc.WEIGHTS_URL in msg
    assert str(tmp_path / inc.WEIGHTS_FILENAME) in msg

    def offline(url, dest):
        raise OSError("Name or service not known")

    monkeypatch.setattr(inc, "_download", offline)
    with pytest.raises(inc.WeightsNotFoundError, match="download failed"):
        inc.load_inception_params(tmp_path, download=True)
