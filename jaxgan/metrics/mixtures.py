"""Mode coverage on 2D Gaussian mixtures, as VEEGAN and PacGAN count it.

Each sample is assigned to its nearest mode; it is high quality when it lies within 3 standard
deviations of that mode. A mode is captured when at least `min_count` high-quality samples land
on it (PacGAN: 20 of 2500 samples). Reverse KL compares the high-quality samples' mode histogram to
the uniform distribution over modes. Those three reward a generator that puts every sample on the
mode's centre, so `spread` reports what they cannot see: the RMS distance of the high-quality
samples from their mode per axis, in units of sigma (about 1 for the data itself, < 1 when the
generator's modes are narrower than the data's).
"""
from __future__ import annotations

import numpy as np


def mode_metrics(points: np.ndarray, centers: np.ndarray, sigma: float,
                 min_count: int = 20) -> dict[str, float]:
    """points: f32[N, 2]; centers: f32[K, 2]. Returns modes captured, high-quality %, reverse KL
    and the within-mode spread (in sigmas).

    Non-finite points count as low quality (a diverged generator must not score well).
    """
    points = np.asarray(points, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64)
    finite = np.all(np.isfinite(points), axis=1)
    d2 = np.sum((np.where(finite[:, None], points, 0.0)[:, None, :] - centers[None]) ** 2, -1)
    nearest = np.argmin(d2, axis=1)
    dist = np.sqrt(d2[np.arange(len(points)), nearest])
    high = finite & (dist <= 3.0 * sigma)
    k = len(centers)
    counts = np.bincount(nearest[high], minlength=k).astype(np.float64)
    if counts.sum() > 0:
        q = counts / counts.sum()
        nz = q > 0
        reverse_kl = float(np.sum(q[nz] * np.log(q[nz] * k)))
    else:
        reverse_kl = float("inf")
    residual = points[high] - centers[nearest[high]]
    spread = float(np.sqrt(np.mean(residual ** 2)) / sigma) if high.any() else float("nan")
    return {
        "modes": int(np.sum(counts >= min_count)),
        "spread": spread,
        "num_modes": k,
        "high_quality": float(np.mean(high)),
        "reverse_kl": reverse_kl,
    }
