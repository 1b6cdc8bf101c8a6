"""Value ranges, grids and image files. The one place where pixels change range."""
from __future__ import annotations

import math
import os

import jax.numpy as jnp
import numpy as np
from PIL import Image


def to_model_range(images):
    """uint8[..., H, W, C] in [0, 255] -> f32 in [-1, 1], exactly the range of the tanh output."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(images) -> np.ndarray:
    """f32 in [-1, 1] -> uint8 in [0, 255] (round to nearest, clipped), as numpy."""
    x = np.asarray(images, dtype=np.float32)
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, nrow: int | None = None, padding: int = 2,
              pad_value: int = 255) -> np.ndarray:
    """uint8[N, H, W, C] -> uint8[rows*(H+p)+p, nrow*(W+p)+p, C], row-major like torchvision."""
    n, h, w, c = images.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / nrow))
    grid = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, c),
                   pad_value, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y:y + h, x:x + w] = images[i]
    return grid


def save_png(path: str, image: np.ndarray, min_size: int = 256) -> None:
    """Writes uint8[H, W, C] (C = 1 or 3); small grids are enlarged (nearest) to be visible."""
    scale = max(1, int(math.ceil(min_size / max(image.shape[:2]))))
    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)
    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    atomic_write(path, lambda f: img.save(f, format="PNG"))


def save_npz(path: str, **arrays) -> None:
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def atomic_write(path: str, write) -> None:
    """Write to a temporary name and rename, so a crash never leaves half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def resize_square(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """Center-crop to a square, resize to size x size, convert to grey or RGB: uint8[S, S, C]."""
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    if w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if channels == 1 else arr


def scatter_png(path: str, points: np.ndarray, centers: np.ndarray | None = None,
                size: int = 384, extent: float | None = None) -> None:
    """A 2D scatter of samples (blue) over the true modes (red), without matplotlib."""
    pts = np.asarray(points, dtype=np.float64)
    ref = pts if centers is None else np.concatenate([pts, centers])
    extent = extent or float(np.max(np.abs(ref))) * 1.2 + 1e-6
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)

    def to_px(p):
        return np.clip(((p + extent) / (2 * extent) * (size - 1)).round().astype(int), 0, size - 1)

    xy = to_px(pts)
    canvas[size - 1 - xy[:, 1], xy[:, 0]] = (40, 80, 200)
    if centers is not None:
        for cx, cy in to_px(np.asarray(centers)):
            canvas[max(0, size - 4 - cy):size + 3 - cy, max(0, cx - 3):cx + 4] = (220, 30, 30)
    save_png(path, canvas, min_size=size)
