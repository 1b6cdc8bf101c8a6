"""Semi-supervised GAN (Salimans et al. 2016, "Improved Techniques for Training GANs", sec. 5).

The critic is a K-class classifier with logits l(x). Its real/fake decision comes from the same
logits: D(x) = Z(x) / (Z(x) + 1) with Z(x) = sum_k exp(l_k(x)), i.e. the real/fake logit is
logsumexp(l(x)) (the "K+1 classes with l_{K+1} = 0" head). It learns from three batches per step:
a few labelled images (cross-entropy), many unlabelled ones (real) and generated ones (fake).
The generator is trained by feature matching: the batch mean of the critic's last hidden layer on
fakes should match that on real data. The trained critic is the classifier we measure.

Used through `python -m jaxgan.train --config configs/mnist_ssgan.py --config.data.labelled=100`
(loss.name='ssgan'); the test accuracy is logged during training and computed by
`python -m jaxgan.evaluate --workdir DIR` (metric group `accuracy`).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgan import checkpoint as ckpt_lib
from jaxgan import config as config_lib
from jaxgan import data as data_lib
from jaxgan import images as images_lib
from jaxgan import losses as losses_lib
from jaxgan import state as state_lib


class WeightNormDense(nn.Module):
    """y = g * x.v / |v| + b (Salimans & Kingma 2016) as the paper's critic has it: the scale g
    is set by `init_from_data` and trained only in the output layer (`train_scale`)."""
    features: int
    train_scale: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        v = self.param("kernel", nn.initializers.normal(0.05), (x.shape[-1], self.features))
        # |w| = sqrt(2): He-scaled pre-activations until init_from_data sets the scale
        g = self.param("scale", nn.initializers.constant(np.sqrt(2.0)), (self.features,))
        b = self.param("bias", nn.initializers.zeros, (self.features,))
        g = g if self.train_scale else jax.lax.stop_gradient(g)
        w = v * (g / jnp.linalg.norm(v, axis=0))
        return jnp.dot(x, w.astype(self.dtype)) + b.astype(self.dtype)


class SSGANCritic(nn.Module):
    """x: f32[B, ...] -> (logits f32[B, K], features f32[B, F]).

    Salimans et al.'s MNIST critic: Gaussian noise on the input (sigma 0.3) and after every
    hidden layer (sigma 0.5) in training, ReLU layers with weight normalization (theirs, the
    default here: 1000-500-250-250-250; `build_critic` takes `model.d_hidden`), a K-way linear
    output. `features` is the last hidden layer (before its noise),
    the statistic feature matching matches. The noise needs the 'noise' rng in training.
    """
    hidden: Sequence[int] = (1000, 500, 250, 250, 250)
    num_classes: int = 10
    input_noise: float = 0.3
    hidden_noise: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True, labels=None):
        del labels  # the critic predicts them
        # Salimans et al.'s images are in [0, 1]: their noise levels are relative to that range
        x = (0.5 * (x.reshape((x.shape[0], -1)) + 1.0)).astype(self.dtype)
        x = self._noise(x, self.input_noise, train)
        features = x
        for i, width in enumerate(self.hidden):
            x = WeightNormDense(width, train_scale=False, dtype=self.dtype, name=f"Dense_{i}")(x)
            features = nn.relu(x)
            x = self._noise(features, self.hidden_noise, train)
        logits = WeightNormDense(self.num_classes, train_scale=True, dtype=self.dtype,
                                 name=f"Dense_{len(self.hidden)}")(x)
        return logits.astype(jnp.float32), features.astype(jnp.float32)

    def _noise(self, x, sigma: float, train: bool):
        if not train or sigma == 0:
            return x
        return x + sigma * jax.random.normal(self.make_rng("noise"), x.shape, x.dtype)


def init_from_data(params, critic: SSGANCritic, images, key) -> dict:
    """Data-dependent initialization of the weight-normalized layers (Salimans & Kingma 2016),
    as Salimans et al. start their critic: each layer's scale and bias are set so that its
    pre-activations on `images` (model range, a few hundred) have mean 0 and variance 1.

    Without it the 0.5-sigma noise layers drown the small activations of a fresh network.
    """
    params = jax.tree.map(lambda p: p, params)  # a copy to write into
    x = 0.5 * (images.reshape((images.shape[0], -1)) + 1.0)
    keys = jax.random.split(key, len(critic.hidden) + 1)
    x = x + critic.input_noise * jax.random.normal(keys[0], x.shape)
    for i in range(len(critic.hidden) + 1):
        layer = dict(params[f"Dense_{i}"])
        v = layer["kernel"]
        pre = x @ (v * (layer["scale"] / jnp.linalg.norm(v, axis=0))) + layer["bias"]
        mean, std = jnp.mean(pre, 0), jnp.std(pre, 0) + 1e-6
        layer["scale"] = layer["scale"] / std
        layer["bias"] = (layer["bias"] - mean) / std
        params[f"Dense_{i}"] = layer
        if i < len(critic.hidden):
            x = nn.relu((pre - mean) / std)
            x = x + critic.hidden_noise * jax.random.normal(keys[i + 1], x.shape)
    return params


def init_state(state, critic: SSGANCritic, images: np.ndarray):
    """The created state with the critic (and its EMA) initialised from the first images."""
    key = jax.random.fold_in(jax.random.fold_in(state.key, state_lib.STREAM_INIT), 0x55)
    d_params = init_from_data(state.d_params, critic, images_lib.to_model_range(images), key)
    state = state.replace(d_params=d_params)
    if state.d_ema:
        # its own buffers: the train step donates the state, and one buffer cannot go twice
        state = state.replace(d_ema={"params": jax.tree.map(jnp.copy, d_params),
                                     "stats": state.d_ema["stats"]})
    return state


def build_critic(config) -> SSGANCritic:
    from jaxgan import models  # models.build calls back into this module
    return SSGANCritic(hidden=config_lib.critic_hidden(config),
                       num_classes=int(config.model.num_classes),
                       dtype=models.compute_dtype(config))


def labelled_subset(labels: np.ndarray, num: int, num_classes: int, seed: int) -> np.ndarray:
    """Indices of `num` labelled examples, num // K of each class, drawn from the seed.

    Balanced as in Salimans et al. (10 per class for 100 labels); the rest of the dataset is used
    without its labels.
    """
    if num % num_classes:
        raise ValueError(f"data.labelled={num} must be a multiple of the {num_classes} classes")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x55]))
    picks = []
    for k in range(num_classes):
        of_k = np.flatnonzero(labels == k)
        if len(of_k) < num // num_classes:
            raise ValueError(f"class {k} has {len(of_k)} examples; data.labelled={num} needs "
                             f"{num // num_classes} of each")
        picks.append(rng.choice(of_k, num // num_classes, replace=False))
    return np.sort(np.concatenate(picks)).astype(np.int32)


def labelled_data(dataset, config, sharding=None) -> dict:
    """The labelled part the step reads: {"labelled_images": uint8[L, ...], "labelled_labels":
    int32[L]}; only these labels ever reach the device."""
    from jaxgan import distributed
    idx = labelled_subset(np.asarray(dataset.labels), int(config.data.labelled),
                          int(config.model.num_classes), int(config.seed))
    host = {"labelled_images": dataset.images[idx],
            "labelled_labels": np.asarray(dataset.labels, np.int32)[idx]}
    return {k: distributed.put(v, sharding) for k, v in host.items()}


def make_train_step(generator, critic, g_tx, d_tx, config) -> Callable:
    """One critic update on (labelled, unlabelled, fake) batches, then one feature-matching
    generator update; pure `(state, data) -> (state, metrics)` like `jaxgan.step`'s."""
    from jaxgan import step as step_lib
    batch = int(config.train.batch_size)
    z_dim = int(config.model.z_dim)
    unlabelled_weight = float(config.loss.unlabelled_weight)
    ema_decay = float(config.train.ema_decay)
    d_ema_decay = float(config.train.d_ema_decay)
    g_apply, d_apply = step_lib.apply_fn(generator), step_lib.apply_fn(critic)

    def train_step(state, data: dict):
        step_key = jax.random.fold_in(jax.random.fold_in(state.key, state_lib.STREAM_STEP),
                                      state.step)
        data_key = jax.random.fold_in(state.key, state_lib.STREAM_DATA)
        k_z, k_lab, k_d, k_g, k_fm, k_sample, k_unl2 = jax.random.split(step_key, 7)
        real, position, _ = data_lib.next_batch(state.data, data, data_key, k_sample, batch)
        # every labelled example once per batch (in a random order), as the paper's code does
        n_lab = data["labelled_labels"].shape[0]
        pick = jnp.tile(jax.random.permutation(k_lab, n_lab), -(-batch // n_lab))[:batch]
        x_lab = images_lib.to_model_range(jnp.take(data["labelled_images"], pick, axis=0))
        y_lab = jnp.take(data["labelled_labels"], pick, axis=0)
        fake, g_stats = g_apply(state.g_params, state.g_stats,
                                jax.random.normal(k_z, (batch, z_dim)), True)
        fake = jax.lax.stop_gradient(fake)

        def critic_loss(d_params):
            k1, k2, k3 = jax.random.split(k_d, 3)
            (l_lab, _), stats = d_apply(d_params, state.d_stats, x_lab, True, None, k1)
            (l_unl, _), stats = d_apply(d_params, stats, real, True, None, k2)
            (l_fake, _), stats = d_apply(d_params, stats, fake, True, None, k3)
            supervised = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(l_lab, y_lab))
            unsupervised = losses_lib.ssgan_unlabelled_loss(l_unl, l_fake)
            value = supervised + unlabelled_weight * unsupervised
            return value, (stats, {
                "d/loss": value, "d/supervised": supervised, "d/unsupervised": unsupervised,
                "d/train_accuracy": jnp.mean(jnp.argmax(l_lab, -1) == y_lab),
                "d/real": jnp.mean(jax.nn.logsumexp(l_unl, -1)),
                "d/fake": jnp.mean(jax.nn.logsumexp(l_fake, -1))})

        (_, (d_stats, metrics)), grads = jax.value_and_grad(critic_loss, has_aux=True)(
            state.d_params)
        updates, d_opt = d_tx.update(grads, state.d_opt, state.d_params)
        d_params = optax.apply_updates(state.d_params, updates)
        metrics["d/grad_norm"] = optax.tree.norm(grads)

        # feature matching against another unlabelled batch, as Salimans et al.'s code does
        n = data["images"].shape[0]
        real2 = images_lib.to_model_range(jnp.take(
            data["images"], jax.random.randint(k_unl2, (batch,), 0, n), axis=0))

        def generator_loss(g_params):
            fake, new_g_stats = g_apply(g_params, g_stats, jax.random.normal(k_g, (batch, z_dim)),
                                        True)
            k1, k2 = jax.random.split(k_fm)
            (_, f_real), _ = d_apply(d_params, d_stats, real2, True, None, k1)
            (_, f_fake), _ = d_apply(d_params, d_stats, fake, True, None, k2)
            return losses_lib.feature_matching_loss(f_real, f_fake), new_g_stats

        (g_value, g_stats), g_grads = jax.value_and_grad(generator_loss, has_aux=True)(
            state.g_params)
        g_updates, g_opt = g_tx.update(g_grads, state.g_opt, state.g_params)
        g_params = optax.apply_updates(state.g_params, g_updates)
        metrics.update({"g/loss": g_value, "g/grad_norm": optax.tree.norm(g_grads)})
        state = state.replace(g_params=g_params, g_stats=g_stats, g_opt=g_opt, d_params=d_params,
                              d_stats=d_stats, d_opt=d_opt, data=position)
        # the critic's average is the classifier (Salimans et al. test with averaged weights)
        state = state_lib.update_averages(state, ema_decay, d_ema_decay)
        return state.replace(step=state.step + 1), metrics

    return train_step


def classifier_variables(state) -> tuple[Any, Any]:
    """(params, stats) of the classifier: the critic's EMA when the recipe keeps one."""
    if state.d_ema:
        return state.d_ema["params"], state.d_ema["stats"]
    return state.d_params, state.d_stats


def make_classifier(critic) -> Callable:
    """(d_params, d_stats, uint8 images) -> predicted classes int32[B] (eval mode: no noise)."""
    from jaxgan import step as step_lib
    d_apply = step_lib.apply_fn(critic)

    def predict(params, stats, images):
        (logits, _), _ = d_apply(params, stats, images_lib.to_model_range(images), False)
        return jnp.argmax(logits, -1).astype(jnp.int32)

    return jax.jit(predict)


def accuracy(predict: Callable, params, stats, images: np.ndarray, labels: np.ndarray,
             batch_size: int = 1000) -> float:
    """Share of `images` whose predicted class is `labels` (fixed-size batches, one compile)."""
    correct, n = 0, len(images)
    for start in range(0, n, batch_size):
        chunk = images[start:start + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        pred = np.asarray(predict(params, stats, chunk))[:batch_size - pad]
        correct += int(np.sum(pred == labels[start:start + batch_size]))
    return correct / max(n, 1)


def test_split(config):
    """The recipe's evaluation data: the dataset's 'test' split, all of it, with labels."""
    test = config.copy_and_resolve_references()
    test.data.split, test.data.limit = "test", 0
    dataset = data_lib.load(test)
    return dataset.images, np.asarray(dataset.labels, np.int32)


def restore_critic(workdir: str, critic: SSGANCritic, config, step: int) -> tuple[Any, Any]:
    """(d_params, d_stats) of a checkpoint's critic, the semi-supervised classifier (saved as
    its own item, like the generator: nothing else is read)."""
    from jaxgan import models
    x = np.zeros((2, *models.data_shape(config)), np.float32)
    params, stats = state_lib.split_variables(
        jax.eval_shape(lambda: critic.init(jax.random.PRNGKey(0), x, train=False)))
    item = ckpt_lib.restore_item(workdir, "critic", {"params": params, "stats": stats}, step)
    return item["params"], item["stats"]


def evaluate_checkpoint(workdir: str, config, step: int) -> dict:
    """{"accuracy/test", "accuracy/num"}: the checkpoint's critic on the test split."""
    from jaxgan import models
    _, critic = models.build(config)
    params, stats = restore_critic(workdir, critic, config, step)
    images, labels = test_split(config)
    acc = accuracy(make_classifier(critic), params, stats, images, labels)
    return {"accuracy/test": acc, "accuracy/num": len(labels)}
