"""jaxgan.evaluate: the Evaluator on images, points and stacked digits, the CLI and its errors.

Real data here is scikit-learn's digits (ships with the package); no MNIST, no Inception weights
(a fake feature function stands in for the network).
"""
import functools
import json
import math
import os

import jax
import numpy as np
import pytest

from conftest import run_module, tiny_ring_config
from jaxgan import checkpoint as ckpt_lib
from jaxgan import data as data_lib
from jaxgan import evaluate as ev
from jaxgan.metrics import classifier as clf_lib
from jaxgan.metrics import fid as fid_lib


@pytest.fixture(scope="module")
def ring_workdir(tmp_path_factory):
    from jaxgan.train import train_and_evaluate
    workdir = str(tmp_path_factory.mktemp("ring"))
    train_and_evaluate(tiny_ring_config(), workdir, progress=False, log=lambda *_: None)
    return workdir


@pytest.fixture(scope="module")
def digits_clf():
    clf = clf_lib.train_on_dataset("digits", steps=150, widths=(8, 16), feature_dim=32)
    assert clf.meta["test_accuracy"] > 0.8 and clf.meta["test_split"] == "holdout"
    return clf


@pytest.fixture(scope="module")
def digits():
    config = clf_lib.dataset_config("digits")
    assert (config.data.image_size, config.data.channels) == (8, 1)
    return config, data_lib.load(config)


def fake_inception(x):
    """uint8 chunk -> (pool f32[n, 12], logits f32[n, 5]): cheap deterministic 'features'."""
    flat = x.reshape(len(x), -1).astype(np.float32) / 255.0
    return flat[:, :12] + flat[:, -12:], flat[:, 20:25] * 4.0


# ------------------------------------------------------------------------------ 2D mixtures


def test_workdir_evaluation_of_ring_appends_json(ring_workdir):
    rec = ev.run_evaluation(workdir=ring_workdir, num=300, log=lambda *_: None)
    assert rec["step"] == 4 and rec["num_samples"] == 300 and rec["metrics"] == "modes"
    assert rec["modes/num_modes"] == 8 and 0 <= rec["modes/captured"] <= 8
    assert 0.0 <= rec["modes/high_quality"] <= 1.0
    with open(os.path.join(ring_workdir, ev.EVAL_FILE)) as f:
        lines = [json.loads(line) for line in f]
    assert lines[-1] == rec


def test_evaluator_streams_in_process_samples_like_train_would(ring_workdir):
    from jaxgan import sample as sample_lib
    from jaxgan import step as step_lib
    config, generator, g, _ = sample_lib.load_generator(ring_workdir)
    evaluator = ev.Evaluator(config)  # loaded once; called every K steps
    sampler = step_lib.jit_sampler(generator)
    chunks = ev.sample_batches(sampler, g["params"], g["stats"], jax.random.PRNGKey(0), 300,
                               int(config.model.z_dim), batch_size=128, mixture=True)
    streamed = evaluator(chunks)
    _, points = sample_lib.generate(ring_workdir, 300, seed=0, batch_size=128)
    np.testing.assert_equal(streamed, ev.evaluate(config, points))  # nan spread == nan
    centers, _ = data_lib.mixture_centers("ring")
    perfect = evaluator(np.repeat(centers, 30, axis=0))
    assert perfect["modes/captured"] == 8 and perfect["modes/high_quality"] == 1.0
    assert perfect["modes/reverse_kl"] == pytest.approx(0.0, abs=1e-12)
    assert perfect["modes/spread"] == 0.0  # every sample on a centre: narrower than the data


def test_within_mode_spread_is_one_sigma_for_the_data_and_scales_with_it():
    from jaxgan.metrics.mixtures import mode_metrics
    centers, sigma = data_lib.mixture_centers("grid")
    rng = np.random.default_rng(0)
    modes = rng.integers(0, len(centers), 50_000)
    noise = rng.normal(size=(50_000, 2))
    real = mode_metrics(centers[modes] + sigma * noise, centers, sigma)
    # per-axis RMS of a 2-D Gaussian cut at radius 3 sigma: sqrt(1 - 4.5 e^-4.5 / (1 - e^-4.5))
    cut = np.sqrt(1 - 4.5 * np.exp(-4.5) / (1 - np.exp(-4.5)))
    assert real["spread"] == pytest.approx(cut, rel=0.01) and real["high_quality"] > 0.98
    narrow = mode_metrics(centers[modes] + 0.4 * sigma * noise, centers, sigma)
    assert narrow["spread"] == pytest.approx(0.4, rel=0.01)


# ------------------------------------------------------------------------------ images


def test_classifier_metrics_real_vs_collapsed_and_cached_reference(digits, digits_clf, tmp_path):
    config, real = digits
    evaluator = ev.Evaluator(config, "classifier", classifier=digits_clf, stats_dir=tmp_path)
    cache = tmp_path / "classifier_digits_train_8x1.npz"
    assert cache.exists()
    with np.load(cache) as f:
        assert str(f["fingerprint"]) == digits_clf.meta["fingerprint"]
        mu, sigma = f["mu"], f["sigma"]
    on_real = evaluator(real.images)
    assert on_real["classifier/fd"] == pytest.approx(0.0, abs=1e-3)
    assert on_real["classifier/classes_covered"] == on_real["classifier/num_classes"] == 10
    assert on_real["classifier/class_kl"] < 0.05
    assert on_real["classifier/score"] > 5
    # half-and-half blends of two different digits read as neither: fewer confident samples
    shifted = np.roll(real.images, 1, axis=0)
    blends = ((real.images.astype(np.float32) + shifted) / 2).astype(np.uint8)
    blended = evaluator(blends[real.labels != np.roll(real.labels, 1)])
    assert blended["classifier/confident"] < 0.5 * on_real["classifier/confident"]
    ones = real.images[digits_clf.predict(real.images) == 1]  # what it calls a 1
    collapsed = evaluator(np.tile(ones, (5, 1, 1, 1)))
    assert collapsed["classifier/classes_covered"] == 1
    assert collapsed["classifier/class_kl"] > 1.5
    assert collapsed["classifier/fd"] > 10 * max(on_real["classifier/fd"], 1e-3)
    assert collapsed["classifier/score"] < 2
    # real digits against real digits: as faithful and as diverse as the data
    assert on_real["classifier/precision"] > 0.95 and on_real["classifier/recall"] > 0.95
    assert on_real["classifier/coverage"] > 0.95
    # ten real digits, one per class, each repeated: every sample is a real digit (precision 1),
    # but the rest of the data is not covered (recall, coverage)
    few = real.images[[int(np.argmax(real.labels == k)) for k in range(10)]]
    repeated = evaluator(np.repeat(few, 100, axis=0))
    assert repeated["classifier/precision"] == 1.0
    assert repeated["classifier/recall"] < 0.1 and repeated["classifier/coverage"] < 0.1
    # a second evaluator reads the cache instead of the data
    again = ev.Evaluator(config, "classifier", classifier=digits_clf, stats_dir=tmp_path)
    np.testing.assert_array_equal(again._cls_ref["mu"], mu)
    assert again._real is None
    np.testing.assert_array_equal(again._cls_ref["sigma"], sigma)


def test_fid_is_kid_with_a_feature_function_and_streamed_moments(digits, tmp_path):
    config, real = digits
    evaluator = ev.Evaluator(config, "fid,is,kid", inception=fake_inception, stats_dir=tmp_path,
                             kid_subsets=5)
    out = evaluator(real.images[:700])
    assert set(out) == {"num_samples", "fid", "is", "is_std", "kid", "kid_std"}
    pool_real, _ = fake_inception(real.images)
    pool, logits = fake_inception(real.images[:700])
    want = fid_lib.frechet_distance(*fid_lib.statistics(pool), *fid_lib.statistics(pool_real))
    assert out["fid"] == pytest.approx(want, rel=1e-6, abs=1e-9)
    assert out["is"] == pytest.approx(fid_lib.inception_score(logits)[0], rel=1e-9)
    assert abs(out["kid"]) < 0.01
    shifted = evaluator(np.clip(real.images[:700].astype(int) + 60, 0, 255).astype(np.uint8))
    assert shifted["fid"] > 10 * out["fid"] and shifted["kid"] > 10 * abs(out["kid"])


def test_streaming_moments_equal_numpy():
    x = np.random.default_rng(0).normal(3.0, 2.0, (1003, 7))
    m = ev._Moments()
    for part in np.array_split(x, [1, 500, 501]):
        m.update(part)
    mu, sigma = m.result()
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-10)


def test_stacked_mnist_modes_from_per_channel_predictions(digits, digits_clf):
    config, real = digits
    stacked = config.copy_and_resolve_references()
    stacked.data.name, stacked.data.channels = "stacked_mnist", 3
    mnist_like = clf_lib.Classifier(digits_clf.params, dict(digits_clf.meta, dataset="mnist"))
    evaluator = ev.Evaluator(stacked, classifier=mnist_like)
    assert evaluator.metrics == ("modes",)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(real.images), (400, 3))
    rgb = np.concatenate([real.images[idx[:, c]] for c in range(3)], axis=-1)
    out = evaluator(rgb)
    digits_pred = mnist_like.predict(real.images)
    ids = 100 * digits_pred[idx[:, 0]] + 10 * digits_pred[idx[:, 1]] + digits_pred[idx[:, 2]]
    assert out["modes/covered"] == len(np.unique(ids)) and out["modes/num_modes"] == 1000
    q = np.bincount(ids, minlength=1000) / len(ids)
    assert out["modes/kl"] == pytest.approx(clf_lib.kl_divergence(q, np.full(1000, 1e-3)))
    with pytest.raises(ev.EvaluateError, match="trained on 'digits'"):
        ev.Evaluator(stacked, classifier=digits_clf)


def _untrained_image_checkpoint(workdir: str):
    """A step-0 checkpoint of a tiny MLP-on-digits recipe, saved the way train.py saves it
    (compiling a training step would cost ~40 s on 2 shared CPU cores)."""
    from conftest import tiny_image_config
    from jaxgan import models, optim
    from jaxgan import state as state_lib
    config = tiny_image_config(**{"model.arch": "mlp", "model.hidden": (16, 16),
                                  "model.g_norm": "none", "model.d_norm": "none"})
    generator, critic = models.build(config)
    g_tx, d_tx = optim.make(config)
    state = jax.jit(lambda: state_lib.create(0, generator, critic, g_tx, d_tx,
                                             int(config.model.z_dim), models.data_shape(config),
                                             1797))()  # one compilation, not one per op
    mngr = ckpt_lib.manager(workdir)
    ckpt_lib.save(mngr, state, config)
    mngr.wait_until_finished()


def test_workdir_evaluation_of_an_image_run_with_the_classifier(digits_clf, tmp_path):
    workdir = str(tmp_path / "run")
    _untrained_image_checkpoint(workdir)
    path = digits_clf.save(tmp_path / "clf")
    rec = ev.run_evaluation(workdir=workdir, num=120, classifier=str(path), log=lambda *_: None)
    assert rec["step"] == 0 and rec["metrics"] == "classifier" and rec["num_samples"] == 120
    assert rec["classifier"] == digits_clf.meta["fingerprint"]
    assert rec["classifier/fd"] > 0 and 1 <= rec["classifier/score"] <= 10
    assert 0 <= rec["classifier/classes_covered"] <= 10
    # 16x16 samples are scored by the 8x8 classifier against 16x16 real digits
    assert (tmp_path / "clf" / "stats" / "classifier_digits_train_16x1.npz").exists()


# ------------------------------------------------------------------------------ files and errors


def test_samples_file_round_trip_and_bad_files(digits, digits_clf, tmp_path):
    config, real = digits
    path = tmp_path / "s.npz"
    np.savez(path, images=real.images[:200, ..., 0].astype(np.float32) / 127.5 - 1.0)
    loaded = ev.load_samples(str(path))
    assert loaded.dtype == np.uint8 and loaded.shape == (200, 8, 8, 1)
    np.testing.assert_array_equal(loaded, real.images[:200])
    digits_clf.save(tmp_path / "clf")
    rec = ev.run_evaluation(samples_path=str(path), dataset="digits", metrics="classifier",
                            classifier=str(tmp_path / "clf"), out=str(tmp_path / "e.jsonl"),
                            log=lambda *_: None)
    assert rec["num_samples"] == 200 and rec["classifier/num_classes"] == 10
    assert (tmp_path / "clf" / "stats" / "classifier_digits_train_8x1.npz").exists()
    assert json.loads((tmp_path / "e.jsonl").read_text()) == rec
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(ev.EvaluateError, match="cannot read"):
        ev.load_samples(str(bad))
    np.savez(tmp_path / "two.npz", a=np.zeros(3), b=np.zeros(3))
    with pytest.raises(ev.EvaluateError, match="name the samples 'images'"):
        ev.load_samples(str(tmp_path / "two.npz"))
    np.savez(tmp_path / "range.npz", images=np.full((2, 8, 8, 1), 7.0))
    with pytest.raises(ev.EvaluateError, match=r"outside \[-1, 1\]"):
        ev.load_samples(str(tmp_path / "range.npz"))
    with pytest.raises(ev.EvaluateError, match="does not exist"):
        ev.load_samples(str(tmp_path / "none.npz"))
    with pytest.raises(ev.EvaluateError, match="--dataset"):
        ev.run_evaluation(samples_path=str(path))


def test_error_paths_raise_one_line_cli_errors(tmp_path, monkeypatch, ring_workdir, digits):
    monkeypatch.setenv("JAXGAN_CACHE_DIR", str(tmp_path / "cache"))
    config, _ = digits
    errors = []
    with pytest.raises(ev._ERRORS) as e:
        ev.run_evaluation(workdir=str(tmp_path / "missing"))
    errors.append(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ckpt_lib.CheckpointError, match="no checkpoints") as e:
        ev.run_evaluation(workdir=str(tmp_path / "empty"))
    errors.append(e.value)
    with pytest.raises(clf_lib.ClassifierError, match="train-classifier --dataset digits --out") as e:
        ev.Evaluator(config)  # default classifier path under the (empty) cache dir
    errors.append(e.value)
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05") as e:
        ev.Evaluator(config, "fid", inception=str(tmp_path / "weights"))
    errors.append(e.value)
    with pytest.raises(ev.EvaluateError, match="use --metrics modes") as e:
        ev.run_evaluation(workdir=ring_workdir, metrics="fid")
    errors.append(e.value)
    with pytest.raises(ev.EvaluateError, match="unknown metric 'fdi'"):
        ev.parse_metrics("fdi", config)
    with pytest.raises(ev.EvaluateError, match="classes covered"):
        ev.parse_metrics("modes", config)
    for err in errors:
        assert isinstance(err, ev._ERRORS) and "\n" not in str(err)


def test_an_image_folder_is_scored_by_fid_not_by_a_classifier(digits, tmp_path):
    """A folder (HW6's faces) has no classes to train a classifier on: FID by default, and the
    CLI says how to get the Inception weights."""
    folder = digits[0].copy_and_resolve_references()
    folder.data.name = "folder"
    assert ev.parse_metrics("", folder) == ("fid",)
    assert ev.parse_metrics("", digits[0]) == ("classifier",)
    with pytest.raises(ev.EvaluateError, match="an image folder has no classes: use --metrics"):
        ev.parse_metrics("fid,classifier", folder)
    with pytest.raises(ev.EvaluateError, match="use --metrics fid$"):
        ev.parse_metrics("modes", folder)
    samples = tmp_path / "s.npz"
    np.savez(samples, images=np.zeros((4, 8, 8, 1), np.uint8))
    bad = run_module("jaxgan.evaluate", "--samples", str(samples), "--dataset", "digits",
                     "--metrics", "fid", "--inception", str(tmp_path / "weights"), timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "pt_inception-2015-12-05" in bad.stderr and "rerun with --download" in bad.stderr


def test_reference_statistics_of_image_folders_are_cached_per_folder_and_contents(tmp_path):
    """Two folders (or one folder edited) never share cached reference statistics; a folder
    smaller than the run's batch is still a reference set; --data_dir names the folder."""
    from PIL import Image

    from jaxgan import config as config_lib
    rng = np.random.default_rng(0)
    for name, scale in (("a", 255), ("b", 60)):
        (tmp_path / name).mkdir()
        for i in range(12):
            pixels = (rng.random((16, 16, 3)) * scale).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    samples = (rng.random((12, 16, 16, 3)) * 255).astype(np.uint8)

    def fid_against(folder):
        config = config_lib.base_config()
        config.data.name, config.data.path = "folder", str(tmp_path / folder)
        config.data.image_size, config.data.channels = 16, 3
        config.train.batch_size = 16  # more than the folder holds: scoring needs no batches
        evaluator = ev.Evaluator(config, "fid", inception=fake_inception,
                                 stats_dir=str(tmp_path / "stats"), log=lambda *_: None)
        return evaluator(samples)["fid"]

    fid_a, fid_b = fid_against("a"), fid_against("b")
    assert fid_a < fid_b  # the samples are uniform like folder a, b is darker
    assert len(os.listdir(tmp_path / "stats")) == 2
    assert fid_against("a") == fid_a  # from its cache
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "a" / "0.png")
    os.utime(tmp_path / "a" / "0.png", ns=(1, 1))  # an edit, whatever the clock's resolution
    assert fid_against("a") != fid_a and len(os.listdir(tmp_path / "stats")) == 3

    np.savez(tmp_path / "s.npz", images=samples)
    score = functools.partial(ev.run_evaluation, samples_path=str(tmp_path / "s.npz"),
                              dataset="folder", metrics="fid", inception=fake_inception,
                              stats_dir=str(tmp_path / "stats"), log=lambda *_: None)
    assert score(data_dir=str(tmp_path / "b"))["fid"] == fid_b
    with pytest.raises(clf_lib.ClassifierError, match="--dataset folder needs --data_dir FOLDER"):
        score()
    real = clf_lib.dataset_config("folder", str(tmp_path / "b"))  # --real_split: native shape
    assert real.data.path == str(tmp_path / "b")
    assert (real.data.image_size, real.data.channels) == (16, 3)


def test_is_better_knows_directions():
    assert ev.is_better("fid", 10.0, 12.0) and not ev.is_better("fid", 13.0, 12.0)
    assert ev.is_better("modes/covered", 900, 800) and ev.is_better("is", 2.0, None)
    assert not ev.is_better("classifier/fd", math.nan, 3.0)
    with pytest.raises(ev.EvaluateError, match="no direction"):
        ev.is_better("d/loss", 1.0, 2.0)


def test_cli_end_to_end_and_exit_code(ring_workdir, tmp_path):
    ok = run_module("jaxgan.evaluate", "--workdir", ring_workdir, "--num", "250", "--metrics",
                    "modes", timeout=120)
    assert ok.returncode == 0, ok.stderr
    rec = json.loads(ok.stdout.strip().splitlines()[-1])
    assert rec["num_samples"] == 250 and "modes/captured" in rec
    with open(os.path.join(ring_workdir, ev.EVAL_FILE)) as f:
        assert json.loads(f.readlines()[-1]) == rec
    bad = run_module("jaxgan.evaluate", "--workdir", str(tmp_path / "nope"), timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error: workdir") and bad.stderr.count("\n") == 1


def test_label_accuracy_scores_requested_classes(digits, digits_clf, tmp_path):
    """Conditional samples carry the classes they were asked for: the classifier checks them."""
    _, real = digits
    digits_clf.save(tmp_path / "clf")
    x, y = real.images[:300], real.labels[:300]
    accuracy = {}
    for name, labels in (("right", y), ("wrong", (y + 1) % 10)):
        path = tmp_path / f"{name}.npz"
        np.savez(path, images=x, labels=labels)
        rec = ev.run_evaluation(samples_path=str(path), dataset="digits", metrics="classifier",
                                classifier=str(tmp_path / "clf"), log=lambda *_: None)
        accuracy[name] = rec["classifier/label_accuracy"]
    assert accuracy["right"] > 0.8 and accuracy["wrong"] < 0.2, accuracy
    np.savez(tmp_path / "short.npz", images=x, labels=y[:10])
    with pytest.raises(ev.EvaluateError, match=r"'labels' must be int\[300\]"):
        ev.run_evaluation(samples_path=str(tmp_path / "short.npz"), dataset="digits",
                          classifier=str(tmp_path / "clf"), log=lambda *_: None)
