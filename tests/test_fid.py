"""FID / IS / KID math against closed forms and direct numpy computations."""

import warnings

import numpy as np
import pytest
from scipy.special import softmax

from jaxgan.metrics import fid


def _random_cov(rng, d, n=None):
    x = rng.normal(size=(n or 4 * d, d)) @ rng.normal(size=(d, d))
    return np.cov(x, rowvar=False)


def _fid_by_eigenvalues(mu1, s1, mu2, s2):
    # Tr sqrt(S1 S2) = sum sqrt(eig(S1 S2)): the eigenvalues of a PSD product are real, >= 0.
    ev = np.linalg.eigvals(s1 @ s2).real.clip(min=0)
    return np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(ev).sum()


def test_fid_of_identical_statistics_is_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=16), _random_cov(rng, 16)
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_fid_of_diagonal_covariances_has_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    v1, v2 = rng.uniform(0.1, 3, 8), rng.uniform(0.1, 3, 8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    got = fid.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(expected, rel=1e-12)


def test_fid_of_general_covariances_matches_eigenvalue_formula():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    s1, s2 = _random_cov(rng, 12), _random_cov(rng, 12)
    got = fid.frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(_fid_by_eigenvalues(mu1, s1, mu2, s2), rel=1e-9)
    # Symmetric in its two arguments.
    assert fid.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(got, rel=1e-9)


def test_fid_of_rank_deficient_covariances_is_finite_and_correct():
    # Fewer samples than dimensions: both covariances are singular (rank 9 of 32).
    rng = np.random.default_rng(3)
    f1, f2 = rng.normal(size=(10, 32)), rng.normal(size=(10, 32)) + 0.5
    (mu1, s1), (mu2, s2) = fid.statistics(f1), fid.statistics(f2)
    assert np.linalg.matrix_rank(s1) == 9
    got = fid.frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(got)
    assert got == pytest.approx(_fid_by_eigenvalues(mu1, s1, mu2, s2), rel=1e-6)


def test_fid_adds_eps_offset_when_sqrtm_is_not_finite(monkeypatch):
    # scipy >= 1.16 rarely returns non-finite roots for PSD products; force the first one to,
    # as older scipy did for singular products, and check the pytorch-fid fallback.
    rng = np.random.default_rng(4)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = _random_cov(rng, 6), _random_cov(rng, 6)
    real_sqrtm, calls = fid._sqrtm, []

    def flaky_sqrtm(a):
        calls.append(a)
        return np.full_like(a, np.inf) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(fid, "_sqrtm", flaky_sqrtm)
    with pytest.warns(RuntimeWarning, match="adding 0.001"):
        got = fid.frechet_distance(mu1, s1, mu2, s2, eps=1e-3)
    off = np.eye(6) * 1e-3
    np.testing.assert_allclose(calls[1], (s1 + off) @ (s2 + off))
    tr_covmean = np.sqrt(np.linalg.eigvals((s1 + off) @ (s2 + off)).real).sum()
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean
    assert got == pytest.approx(expected, rel=1e-9)


def test_fid_rejects_non_covariances_with_large_imaginary_part():
    with pytest.raises(ValueError, match="imaginary component"):
        fid.frechet_distance(np.zeros(2), np.diag([-1.0, 1.0]), np.zeros(2), np.eye(2))


def test_fid_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="covariances"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))


def test_statistics_and_npz_round_trip(tmp_path):
    f = np.random.default_rng(5).normal(size=(50, 7)).astype(np.float32)
    mu, sigma = fid.statistics(f)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, f.astype(np.float64).mean(0))
    np.testing.assert_allclose(sigma, np.cov(f.astype(np.float64).T))
    fid.save_statistics(tmp_path / "s.npz", mu, sigma)
    mu2, sigma2 = fid.load_statistics(tmp_path / "s.npz")
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    with pytest.raises(ValueError, match="N >= 2"):
        fid.statistics(f[:1])


def test_inception_score_of_uniform_predictions_is_one():
    mean, std = fid.inception_score(np.zeros((100, 10)), splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_confident_diverse_predictions_is_num_classes():
    k = 7
    probs = np.eye(k)[np.arange(70) % k]
    mean, std = fid.inception_score(probs, splits=1, from_logits=False)
    assert mean == pytest.approx(k, rel=1e-12) and std == 0.0
    mean, _ = fid.inception_score(60.0 * probs, splits=1)  # near one-hot logits
    assert mean == pytest.approx(k, rel=1e-6)
    # Unshuffled splits that each hold every class also give exactly K.
    mean, std = fid.inception_score(probs, splits=10, from_logits=False, shuffle=False)
    assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_matches_direct_computation_with_shuffled_splits():
    logits = np.random.default_rng(6).normal(size=(103, 11)) * 3
    mean, std = fid.inception_score(logits, splits=4, seed=7)
    p = softmax(logits[np.random.RandomState(7).permutation(103)], axis=1)
    scores = []
    for i in range(4):
        part = p[i * 103 // 4:(i + 1) * 103 // 4]
        q = part.mean(0)
        scores.append(np.exp(np.mean([np.sum(r * np.log(r / q)) for r in part])))
    assert mean == pytest.approx(np.mean(scores), rel=1e-12)
    assert std == pytest.approx(np.std(scores), rel=1e-9)


def _mmd2_by_loops(x, y, degree=3, coef0=1.0):
    k = lambda a, b: (a @ b / x.shape[1] + coef0) ** degree  # noqa: E731
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_direct_unbiased_estimator():
    rng = np.random.default_rng(8)
    f1, f2 = rng.normal(size=(40, 5)), rng.normal(size=(30, 5)) + 0.7
    mean, std = fid.kernel_inception_distance(f1, f2, subsets=3, subset_size=12, seed=9)
    r = np.random.RandomState(9)
    values = []
    for _ in range(3):
        x = f1[r.choice(40, 12, replace=False)]
        y = f2[r.choice(30, 12, replace=False)]
        values.append(_mmd2_by_loops(x, y))
    assert mean == pytest.approx(np.mean(values), rel=1e-10)
    assert std == pytest.approx(np.std(values), rel=1e-8)
    assert mean > 0.1


def test_kid_of_identical_sets_is_near_zero_and_shift_is_positive():
    rng = np.random.default_rng(10)
    f = rng.normal(size=(300, 16))
    same, _ = fid.kernel_inception_distance(f, f, subsets=20, subset_size=100)
    shifted, _ = fid.kernel_inception_distance(f, f + 1.0, subsets=20, subset_size=100)
    # With X = Y the estimator reduces to 2 (S - T) / (m (m - 1)) - 2 S / m^2 (S = sum K, T = tr K).
    k = fid.polynomial_kernel(f, f)
    m, total, trace = len(f), k.sum(), np.trace(k)
    expected = 2 * (total - trace) / (m * (m - 1)) - 2 * total / m**2
    assert fid.mmd2_unbiased(k, k, k) == pytest.approx(expected, rel=1e-10)
    assert abs(same) < 0.05 * shifted
    assert shifted > 0.5


def test_kid_names_the_fix_for_too_few_samples():
    with pytest.raises(ValueError, match="subset_size=10"):
        fid.kernel_inception_distance(np.zeros((10, 3)), np.zeros((20, 3)), subset_size=1000)


def test_no_warnings_on_regular_input():
    rng = np.random.default_rng(11)
    s = _random_cov(rng, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fid.frechet_distance(np.zeros(5), s, np.ones(5), s)
