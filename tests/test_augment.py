"""DiffAugment: each operation does what it says, per example, and lets gradients through."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxgan import augment


def _images(b=6, s=8, c=1):
    return jax.random.uniform(jax.random.PRNGKey(0), (b, s, s, c), minval=-1.0, maxval=1.0)


def test_translation_shifts_each_image_with_zero_fill():
    x = _images()
    out = np.asarray(augment.translation(jax.random.PRNGKey(1), x))
    xs = np.asarray(x)
    shifts = set()
    for img, got in zip(xs, out):
        found = None
        for dy in range(-1, 2):  # 0.125 * 8 = 1 pixel
            for dx in range(-1, 2):
                want = np.zeros_like(img)
                src = img[max(0, -dy):8 - max(0, dy), max(0, -dx):8 - max(0, dx)]
                want[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
                if np.array_equal(want, got):
                    found = (dy, dx)
        assert found is not None
        shifts.add(found)
    assert len(shifts) > 1  # examples draw their own shifts


def test_cutout_zeroes_one_square_and_keeps_the_rest():
    x = _images(b=8, s=8) + 5.0  # no pixel is 0 before the cutout
    out = np.asarray(augment.cutout(jax.random.PRNGKey(2), x))
    for img, got in zip(np.asarray(x), out):
        zero = got[..., 0] == 0.0
        ys, xs = np.nonzero(zero)
        assert 1 <= zero.sum() <= 16  # a 4x4 square, possibly clipped at the border
        assert zero.sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)  # a rectangle
        np.testing.assert_array_equal(got[~zero], img[~zero])


def test_color_on_grey_images_is_an_affine_map_per_image():
    """Saturation needs colour: on one channel only brightness and contrast act, x -> a x + b."""
    x = _images()
    out = np.asarray(augment.color(jax.random.PRNGKey(3), x))
    scales = []
    for img, got in zip(np.asarray(x).ravel().reshape(6, -1), out.reshape(6, -1)):
        a, b = np.polyfit(img, got, 1)
        np.testing.assert_allclose(a * img + b, got, atol=1e-5)
        assert 0.5 <= a <= 1.5
        scales.append(a)
    assert np.std(scales) > 0.01


def test_color_changes_saturation_of_rgb_images():
    x = _images(c=3)
    out = augment.color(jax.random.PRNGKey(4), x)
    spread = lambda v: np.std(np.asarray(v) - np.mean(np.asarray(v), -1, keepdims=True), axis=(1, 2, 3))  # noqa: E731
    assert not np.allclose(spread(out), spread(x), rtol=0.05)


def test_policy_is_differentiable_and_empty_policy_is_identity():
    x = _images(c=3)
    policy = augment.parse("color, translation,cutout")
    assert policy == ("color", "translation", "cutout")
    g = jax.grad(lambda v: jnp.sum(augment.diff_augment(jax.random.PRNGKey(5), v, policy) ** 2))(x)
    assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).sum()) > 0
    np.testing.assert_array_equal(augment.diff_augment(jax.random.PRNGKey(5), x, ()), x)
