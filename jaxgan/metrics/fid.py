"""FID, Inception Score and KID from extracted features: numpy/scipy in float64, no JAX.

Each formula follows the reference implementation so numbers are comparable across libraries:
  * FID: pytorch-fid `calculate_frechet_distance` (TTUR's stable version): scipy sqrtm, an eps*I
    offset when the product's square root is not finite, the real part kept unless the
    imaginary part of the diagonal exceeds 1e-3.
  * IS: torch-fidelity `isc_features_to_metric` (improved-gan formula): rows shuffled with
    `np.random.RandomState(seed).permutation`, `splits` contiguous chunks of i*N//splits,
    exp(mean KL(p(y|x) || p(y))) per chunk, then mean and (population) std.
  * KID: torch-fidelity / Binkowski et al. 2018: unbiased MMD^2 with the polynomial kernel
    (x.y / d + 1)^3 over `subsets` random subsets drawn without replacement.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from scipy import linalg
from scipy.special import log_softmax, softmax, xlogy


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """f[N, D] -> (mu f64[D], sigma f64[D, D]), sigma the unbiased (N - 1) covariance.

    Computed in float64 like pytorch-fid (which stores activations in a float64 array).
    """
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be [N, D] with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def save_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Writes an .npz with keys `mu` and `sigma` (the format pytorch-fid reads and writes)."""
    np.savez(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads (mu f64[D], sigma f64[D, D]) from an .npz with keys `mu` and `sigma`."""
    with np.load(path) as data:
        missing = {"mu", "sigma"} - set(data.files)
        if missing:
            raise KeyError(f"{path} lacks {sorted(missing)}; write it with save_statistics")
        return data["mu"].astype(np.float64), data["sigma"].astype(np.float64)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """scipy's matrix square root, without its singular-matrix warning (the caller checks)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        return linalg.sqrtm(a)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)), as pytorch-fid computes it.

    mu: f[D], sigma: f[D, D]; math in float64. Nearly singular products whose square root is not
    finite are retried with eps*I added to both covariances (with a warning); a significant
    imaginary part (diagonal |imag| > 1e-3) means the inputs are not covariances: ValueError.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in shape: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            f"covariances must both be [D, D] with D={mu1.shape[0]}, "
            f"got {sigma1.shape} and {sigma2.shape}"
        )
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"FID: product of covariances is singular; adding {eps} to their diagonals",
            RuntimeWarning, stacklevel=2,
        )
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                f"FID: sqrtm has an imaginary component {np.max(np.abs(covmean.imag)):.3g}; "
                "sigma1/sigma2 must be symmetric positive semi-definite covariances"
            )
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def inception_score(
    scores: np.ndarray,
    splits: int = 10,
    *,
    from_logits: bool = True,
    shuffle: bool = True,
    seed: int = 2020,
) -> tuple[float, float]:
    """Inception Score (mean, std) over `splits` chunks of f[N, K] logits (or probabilities).

    Reference: torch-fidelity, whose default input is the fc output *without* bias
    (`extract_features` default). from_logits=False takes rows of probabilities instead.
    IS is 1 for identical predictions and K for confident predictions spread over K classes.
    """
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"scores must be [N, K], got shape {x.shape}")
    n = x.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be in [1, N={n}], got {splits}")
    if shuffle:
        x = x[np.random.RandomState(seed).permutation(n)]
    if from_logits:
        p, log_p = softmax(x, axis=1), log_softmax(x, axis=1)
    else:
        if (x < 0).any() or not np.allclose(x.sum(axis=1), 1.0, atol=1e-4):
            raise ValueError("probabilities must be >= 0 and sum to 1 per row; "
                             "pass from_logits=True for logits")
        p, log_p = x, None
    values = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        p_i = p[lo:hi]
        q = p_i.mean(axis=0, keepdims=True)
        if log_p is None:
            kl = xlogy(p_i, p_i) - xlogy(p_i, q)  # 0 log 0 = 0 for one-hot rows
        else:
            kl = p_i * (log_p[lo:hi] - np.log(q))
        values.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(values)), float(np.std(values))


def polynomial_kernel(
    x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> np.ndarray:
    """(gamma x y^T + coef0)^degree for x f[n, D], y f[m, D] -> f64[n, m]; gamma defaults to 1/D."""
    if gamma is None:
        gamma = 1.0 / x.shape[1]
    return (x @ y.T * gamma + coef0) ** degree


def mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
    """Unbiased MMD^2 from m x m kernel matrices: off-diagonal means of K_xx, K_yy minus 2 mean K_xy."""
    m = k_xx.shape[0]
    sum_xx = k_xx.sum() - np.trace(k_xx)
    sum_yy = k_yy.sum() - np.trace(k_yy)
    return float((sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(
    features1: np.ndarray,
    features2: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    *,
    seed: int = 2020,
) -> tuple[float, float]:
    """KID (mean, std) over `subsets` random subsets: unbiased MMD^2, polynomial kernel.

    features: f[N1, D] and f[N2, D]. Subsets are drawn without replacement with
    `np.random.RandomState(seed).choice`, first from features1 then features2, like torch-fidelity
    (which computes in float32; this computes in float64).
    """
    f1 = np.asarray(features1, dtype=np.float64)
    f2 = np.asarray(features2, dtype=np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"features must be [N1, D] and [N2, D], got {f1.shape} and {f2.shape}")
    n1, n2 = len(f1), len(f2)
    if subset_size > min(n1, n2) or subset_size < 2:
        raise ValueError(
            f"KID subset_size={subset_size} needs 2 <= subset_size <= min(N1, N2) = "
            f"{min(n1, n2)}; pass subset_size={min(n1, n2)} or extract more samples"
        )
    rng = np.random.RandomState(seed)
    values = np.zeros(subsets)
    for i in range(subsets):
        x = f1[rng.choice(n1, subset_size, replace=False)]
        y = f2[rng.choice(n2, subset_size, replace=False)]
        k = lambda a, b: polynomial_kernel(a, b, degree, gamma, coef0)  # noqa: E731
        values[i] = mmd2_unbiased(k(x, x), k(x, y), k(y, y))
    return float(np.mean(values)), float(np.std(values))
