"""Semi-supervised GAN: its losses by hand, the labelled subset, and a critic that learns to
classify from a few labels through the CLIs (scikit-learn digits: offline, small)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import apply_overrides, run_module
from jaxgan import config as config_lib
from jaxgan import losses, ssgan
from jaxgan.config import ConfigError, base_config


def test_unlabelled_loss_is_half_the_gan_loss_on_logsumexp_logits():
    real = jnp.array([[0.0, 0.0], [1.0, -1.0]])
    fake = jnp.array([[-2.0, -3.0], [0.5, 0.5]])
    z_real = np.log(np.exp([0.0, 0.0]).sum()), np.log(np.exp([1.0, -1.0]).sum())
    z_fake = np.log(np.exp([-2.0, -3.0]).sum()), np.log(np.exp([0.5, 0.5]).sum())
    softplus = lambda v: np.log1p(np.exp(v))  # noqa: E731
    # D(x) = Z/(Z+1): -log D(x) = softplus(-lse), -log(1 - D(G(z))) = softplus(lse)
    expected = 0.5 * (np.mean([softplus(-z) for z in z_real])
                      + np.mean([softplus(z) for z in z_fake]))
    np.testing.assert_allclose(losses.ssgan_unlabelled_loss(real, fake), expected, rtol=1e-6)


def test_feature_matching_compares_batch_means():
    real = jnp.array([[1.0, 2.0], [3.0, 4.0]])   # mean (2, 3)
    fake = jnp.array([[0.0, 0.0], [2.0, 2.0]])   # mean (1, 1)
    np.testing.assert_allclose(losses.feature_matching_loss(real, fake), (1 + 4) / 2)
    # the same means with other examples: nothing to match
    assert float(losses.feature_matching_loss(real, real[::-1])) == 0.0


def test_labelled_subset_is_balanced_and_from_the_seed():
    labels = np.repeat(np.arange(10), 30)
    idx = ssgan.labelled_subset(labels, 100, 10, seed=0)
    assert len(set(idx.tolist())) == 100
    np.testing.assert_array_equal(np.bincount(labels[idx], minlength=10), [10] * 10)
    np.testing.assert_array_equal(idx, ssgan.labelled_subset(labels, 100, 10, seed=0))
    assert not np.array_equal(idx, ssgan.labelled_subset(labels, 100, 10, seed=1))
    with pytest.raises(ValueError, match="class 3 has 2"):
        ssgan.labelled_subset(np.concatenate([labels[labels != 3], [3, 3]]), 100, 10, seed=0)


def test_critic_noise_only_in_training():
    critic = ssgan.SSGANCritic(hidden=(8, 8), num_classes=3)
    x = jnp.ones((4, 5))
    v = critic.init(jax.random.PRNGKey(0), x, train=False)
    a, fa = critic.apply(v, x, train=False)
    b, _ = critic.apply(v, x, train=False)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 3) and fa.shape == (4, 8)
    c, _ = critic.apply(v, x, train=True, rngs={"noise": jax.random.PRNGKey(1)})
    assert not np.allclose(a, c)


def test_data_dependent_init_standardises_every_layer_on_the_init_batch():
    critic = ssgan.SSGANCritic(hidden=(64, 32), num_classes=3, input_noise=0.0, hidden_noise=0.0)
    x = jax.random.uniform(jax.random.PRNGKey(1), (300, 20), minval=-1.0, maxval=1.0)
    v = critic.init(jax.random.PRNGKey(0), x[:2], train=False)
    params = ssgan.init_from_data(v["params"], critic, x, jax.random.PRNGKey(2))
    logits, _ = critic.apply({"params": params}, x, train=False)
    np.testing.assert_allclose(np.mean(logits, 0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.std(logits, 0), 1.0, atol=1e-4)
    # the init only rescales: the weight directions are the random ones
    np.testing.assert_array_equal(params["Dense_1"]["kernel"], v["params"]["Dense_1"]["kernel"])


def ssgan_config(**overrides):
    c = base_config()
    c.data.name = "digits"
    c.data.image_size = 8
    c.data.labelled = 50
    c.model.arch = "mlp"
    c.model.num_classes = 10
    c.model.z_dim = 16
    c.model.hidden = (64,)
    c.loss.name = "ssgan"
    c.optim.g = config_lib.adam(3e-3, 0.5, 0.999)
    c.optim.d = config_lib.adam(3e-3, 0.5, 0.999)
    c.train.batch_size = 50
    c.train.steps = 200
    c.train.log_every = 100
    c.train.sample_every = 200
    c.train.checkpoint_every = 200
    c.train.steps_per_call = 50
    c.train.num_grid = 4
    return apply_overrides(c, overrides)


@pytest.mark.parametrize("overrides, message", [
    ({"model.num_classes": 0}, "model.num_classes=K"),
    ({"data.labelled": 55}, "multiple of"),
    ({"model.arch": "dcgan"}, "model.arch='mlp'"),
    ({"train.n_critic": 2}, "n_critic=1"),
    ({"eval.every": 100}, "eval.metrics=classifier"),
])
def test_bad_ssgan_recipes_are_rejected(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config_lib.validate(ssgan_config(**overrides))


def test_ssgan_learns_to_classify_from_50_labels_through_the_clis(tmp_path):
    """200 steps on digits with 5 labels per class: the critic classifies the 1797 digits far
    above chance (10%), and `jaxgan.evaluate --workdir` restores it and says the same."""
    from jaxgan import train
    workdir = str(tmp_path / "run")
    config = ssgan_config()
    train.train_and_evaluate(config, workdir, progress=False, log=lambda *a: None)
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    acc = [r["ssgan/test_accuracy"] for r in records if "ssgan/test_accuracy" in r]
    assert acc and acc[-1] > 0.6, acc

    out = run_module("jaxgan.evaluate", "--workdir", workdir)
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads(out.stdout.strip().splitlines()[-1])
    assert record["accuracy/num"] == 1797 and record["step"] == 200
    np.testing.assert_allclose(record["accuracy/test"], acc[-1], atol=1e-6)

    bad = run_module("jaxgan.evaluate", "--workdir", workdir, "--metrics", "modes")
    assert bad.returncode == 2 and bad.stderr.startswith("error:")
