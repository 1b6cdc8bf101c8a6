"""The domain classifier: training on separable fake data, save/load, and the class metrics."""
import json
import math

import numpy as np
import pytest

from jaxgan.metrics import classifier as clf_lib
from jaxgan.metrics import fid as fid_lib

SIZE, K = 8, 4


def fake_digits(n: int, seed: int = 0, channels: int = 1):
    """uint8[n, 8, 8, C]: class k is a bright 4x4 square in quadrant k, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, n).astype(np.int32)
    x = rng.integers(0, 60, (n, SIZE, SIZE, channels))
    for k in range(K):
        r, c = divmod(k, 2)
        x[labels == k, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 180
    return x.astype(np.uint8), labels


@pytest.fixture(scope="module")
def trained():
    images, labels = fake_digits(512)
    clf = clf_lib.train_classifier(images, labels, K, steps=60, batch_size=32, widths=(4, 8),
                                   feature_dim=16, meta={"dataset": "fake"})
    return clf


def test_trains_to_high_accuracy_on_separable_data(trained):
    test_images, test_labels = fake_digits(256, seed=1)
    assert trained.accuracy(test_images, test_labels) > 0.95
    feats, logits = trained.features(test_images, batch_size=100)  # padded last batch
    assert feats.shape == (256, 16) and logits.shape == (256, K)
    assert np.all(feats >= 0)  # post-ReLU penultimate layer
    m = trained.meta
    assert (m["image_size"], m["channels"], m["num_classes"], m["dataset"]) == (SIZE, 1, K, "fake")
    np.testing.assert_allclose(sum(m["label_hist"]), 1.0)


def test_features_do_not_depend_on_batch_size_or_chunking(trained):
    images, _ = fake_digits(70, seed=2)
    f1, l1 = trained.features(images, batch_size=64)
    f2, l2 = trained.features([images[:13], images[13:]], batch_size=16)
    np.testing.assert_allclose(f1, f2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(l1, l2, rtol=1e-5, atol=1e-5)


def test_other_sizes_are_resized_and_rgb_is_scored_per_channel(trained):
    images, labels = fake_digits(64, seed=3)
    big = images.repeat(2, axis=1).repeat(2, axis=2)  # 16x16: resized back to 8x8
    assert trained.accuracy(big, labels) > 0.9
    rgb = np.concatenate([images, images[::-1], images[:, ::-1, ::-1]], axis=-1)
    feats, logits = trained.features(rgb)
    assert feats.shape == (64, 3 * 16) and logits.shape == (64, 3, K)
    pred = trained.predict(rgb)
    np.testing.assert_array_equal(pred[:, 0], trained.predict(images))
    np.testing.assert_array_equal(pred[:, 1], trained.predict(images[::-1]))


def test_save_load_round_trip(trained, tmp_path):
    path = trained.save(tmp_path / "clf")
    assert path.name == clf_lib.CLASSIFIER_FILENAME
    back = clf_lib.load_classifier(tmp_path / "clf")
    images, _ = fake_digits(32, seed=4)
    np.testing.assert_array_equal(back.features(images)[0], trained.features(images)[0])
    assert back.meta["fingerprint"] == trained.meta["fingerprint"] == clf_lib.fingerprint(
        back.params)
    explicit = trained.save(tmp_path / "x.npz")
    assert explicit == tmp_path / "x.npz" and clf_lib.load_classifier(explicit).num_classes == K


def test_missing_or_damaged_classifier_names_the_fix(tmp_path):
    with pytest.raises(clf_lib.ClassifierError, match="--dataset mnist --data_dir DIR"):
        clf_lib.load_classifier(tmp_path / "nothing")
    with pytest.raises(clf_lib.ClassifierError, match="--dataset fashion_mnist --data_dir DIR"):
        clf_lib.load_classifier(tmp_path / "nothing", "fashion_mnist")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(clf_lib.ClassifierError, match="not a readable classifier"):
        clf_lib.load_classifier(bad)
    np.savez(tmp_path / "other.npz", meta=np.array(json.dumps({"num_classes": 3})))
    with pytest.raises(clf_lib.ClassifierError, match="lacks"):
        clf_lib.load_classifier(tmp_path / "other.npz")


def test_frechet_distance_on_features_is_small_for_same_data(trained):
    a, _ = fake_digits(400, seed=5)
    b, _ = fake_digits(400, seed=6)
    fa, fb = trained.features(a)[0], trained.features(b)[0]
    same = fid_lib.frechet_distance(*fid_lib.statistics(fa), *fid_lib.statistics(fb))
    one_class = trained.features(a[trained.predict(a) == 0])[0]
    collapsed = fid_lib.frechet_distance(*fid_lib.statistics(one_class), *fid_lib.statistics(fb))
    assert 0 <= same < 0.1 * collapsed


def test_class_metrics_on_hand_made_predictions():
    data = np.array([0.25, 0.25, 0.25, 0.25])
    uniform = np.repeat(np.arange(4), 25)
    m = clf_lib.class_metrics(uniform, data)
    assert m == {"classes_covered": 4, "num_classes": 4, "class_kl": 0.0}
    collapsed = np.zeros(100, int)
    m = clf_lib.class_metrics(collapsed, data)
    assert m["classes_covered"] == 1
    assert m["class_kl"] == pytest.approx(math.log(4))
    # class 3 gets 2% of samples: below 0.25 * 25% = 6.25%, so not covered
    preds = np.array([0] * 34 + [1] * 32 + [2] * 32 + [3] * 2)
    m = clf_lib.class_metrics(preds, data)
    assert m["classes_covered"] == 3
    q = np.array([0.34, 0.32, 0.32, 0.02])
    assert m["class_kl"] == pytest.approx(float(np.sum(q * np.log(q / 0.25))))
    # unbalanced data: the threshold follows the data's share of each class
    m = clf_lib.class_metrics(np.array([0] * 95 + [1] * 5), np.array([0.9, 0.1]))
    assert m["classes_covered"] == 2
    assert clf_lib.kl_divergence([0.5, 0.5], [1.0, 0.0]) == math.inf


def test_confident_share_counts_top_probabilities_at_the_threshold():
    sure = [10.0, 0.0, 0.0]                     # p_top = 1 / (1 + 2 e^-10) > 0.9
    torn = [1.0, 1.0, 0.0]                      # p_top = e / (2e + 1) ~ 0.42
    just = [math.log(9.5), 0.0, -math.inf]      # p_top = 9.5 / 10.5 ~ 0.905
    assert clf_lib.confident_share(np.array([sure, torn, just, torn])) == 0.5
    assert clf_lib.confident_share(np.array([torn]), threshold=0.4) == 1.0
    with pytest.raises(ValueError, match="N, K"):
        clf_lib.confident_share(np.zeros((0, 3)))


def test_stacked_mnist_modes_on_hand_made_channel_predictions():
    channels = np.array([[1, 2, 3], [1, 2, 3], [9, 9, 9], [0, 0, 0]])
    np.testing.assert_array_equal(clf_lib.stacked_mode_ids(channels), [123, 123, 999, 0])
    m = clf_lib.stacked_mnist_metrics(channels)
    assert (m["covered"], m["num_modes"]) == (3, 1000)
    q = np.array([0.5, 0.25, 0.25])
    assert m["kl"] == pytest.approx(float(np.sum(q * np.log(q * 1000))))
    all_modes = np.stack([np.arange(1000) // 100, np.arange(1000) // 10 % 10,
                          np.arange(1000) % 10], 1)
    m = clf_lib.stacked_mnist_metrics(all_modes)
    assert m["covered"] == 1000 and m["kl"] == pytest.approx(0.0, abs=1e-12)
    assert clf_lib.stacked_mnist_metrics(np.zeros((50, 3), int))["kl"] == pytest.approx(
        math.log(1000))
    assert clf_lib.stacked_mnist_metrics(channels, min_count=2)["covered"] == 1


def test_bad_training_inputs_are_rejected():
    images, labels = fake_digits(16)
    with pytest.raises(ValueError, match="uint8"):
        clf_lib.train_classifier(images.astype(np.float32), labels, K, steps=1)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        clf_lib.train_classifier(images, labels, 2, steps=1)
