"""The CLIs keep compiled programs on disk, so a second run of a recipe compiles nothing new."""
import os

import pytest

from conftest import run_module


def _env(cache_root, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.update(JAXGAN_CACHE_DIR=str(cache_root),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **extra)
    return env


def _train(workdir, env):
    return run_module("jaxgan.train", "--config", "configs/ring_gan.py", "--workdir",
                      str(workdir), "--noprogress", "--config.train.steps=2",
                      "--config.train.log_every=1", "--config.train.sample_every=2",
                      "--config.train.checkpoint_every=2", env=env)


def _entries(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def test_train_cli_writes_the_cache_and_a_rerun_only_reads_it(tmp_path):
    env = _env(tmp_path / "cache")
    first = _train(tmp_path / "a", env)
    assert first.returncode == 0, first.stderr
    cached = _entries(tmp_path / "cache" / "xla")
    assert cached, "no compiled program was written to $JAXGAN_CACHE_DIR/xla"
    second = _train(tmp_path / "b", env)
    assert second.returncode == 0, second.stderr
    assert _entries(tmp_path / "cache" / "xla") == cached  # every program came from the cache


def test_cache_can_be_switched_off(tmp_path):
    run = _train(tmp_path / "a", _env(tmp_path / "cache", JAXGAN_COMPILATION_CACHE="0"))
    assert run.returncode == 0, run.stderr
    assert not _entries(tmp_path / "cache" / "xla")


def test_every_cache_user_resolves_the_same_directory(tmp_path, monkeypatch):
    """Datasets, XLA programs, classifiers, Inception weights and the oneDNN handlers share one
    root; an empty $JAXGAN_CACHE_DIR means unset (the Inception loader once read it as the
    working directory), then $XDG_CACHE_HOME/jaxgan, and '~' expands."""
    from jaxgan import compile_cache, data, evaluate, onednn
    from jaxgan.metrics import inception

    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for value, xdg, root in (("", "", tmp_path / ".cache" / "jaxgan"),
                             ("", str(tmp_path / "x"), tmp_path / "x" / "jaxgan"),
                             ("~/c", str(tmp_path / "x"), tmp_path / "c"),
                             (str(tmp_path / "d"), "", tmp_path / "d")):
        monkeypatch.setenv("JAXGAN_CACHE_DIR", value)
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)
        assert onednn.tuning_file().parent == root
        assert data._cache_path("tfds", "mnist").startswith(str(root / "tfds") + os.sep)
        assert evaluate.default_classifier_path("mnist") == root / "classifiers" / "mnist"
        with pytest.raises(inception.WeightsNotFoundError, match=str(root / "pt_inception")):
            inception.load_inception_params(download=False)
        assert compile_cache.cache_path() == str(root / "xla")
