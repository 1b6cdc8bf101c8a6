"""WGAN with weight clipping (Arjovsky et al. 2017) on MNIST at 28x28.

c = 0.01, RMSprop(5e-5), n_critic = 5, critic without a sigmoid; batch norm is allowed here (the
paper's DCGAN critic has it). Slow to converge by design: compare its Wasserstein estimate with
mnist_wgan_gp.py.
"""
from jaxgan.config import base_config, rmsprop


def get_config():
    c = base_config()
    c.data.name = "mnist"
    c.data.image_size = 28
    c.data.channels = 1
    c.model.arch = "dcgan"
    c.model.g_width = 32
    c.model.d_width = 32
    c.model.g_norm = "batch"
    c.model.d_norm = "batch"
    c.loss.name = "wgan"
    c.loss.clip = 0.01
    c.optim.g = rmsprop(5e-5)
    c.optim.d = rmsprop(5e-5)
    c.train.n_critic = 5
    c.train.batch_size = 64
    c.train.steps = 3000
    c.train.log_every = 100
    c.train.sample_every = 500
    c.train.checkpoint_every = 1000
    return c
