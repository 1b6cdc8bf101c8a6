"""DCGAN (Radford et al. 2016) on MNIST at 28x28: the original GAN loss, non-saturating G.

Reads prepared TFDS MNIST without TensorFlow:
    python -m jaxgan.train --config configs/mnist_gan.py --workdir runs/mnist_gan \\
        --config.data.data_dir=../shared/tensorflow_datasets
Widths are halved from the paper's 64 so that a CPU run finishes in minutes.
"""
from jaxgan.config import adam, base_config


def get_config():
    c = base_config()
    c.data.name = "mnist"
    c.data.split = "train"
    c.data.image_size = 28          # 7x7 -> 14x14 -> 28x28
    c.data.channels = 1
    c.model.arch = "dcgan"
    c.model.z_dim = 100
    c.model.g_width = 32
    c.model.d_width = 32
    c.model.g_norm = "batch"
    c.model.d_norm = "batch"
    c.loss.name = "gan"
    c.loss.generator = "non_saturating"
    c.optim.g = adam(2e-4, 0.5, 0.999)   # DCGAN
    c.optim.d = adam(2e-4, 0.5, 0.999)
    c.train.batch_size = 64
    c.train.n_critic = 1
    c.train.steps = 6000            # ~6.4 epochs
    c.train.log_every = 100
    c.train.sample_every = 500
    c.train.checkpoint_every = 1000
    return c
