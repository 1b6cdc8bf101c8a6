"""WGAN-GP on the 8-Gaussian ring (PacGAN geometry: radius 1, sigma 0.01).

lambda = 10, n_critic = 5, Adam(1e-4, 0.5, 0.9) as in Gulrajani et al. 2017; MLP critic without
batch norm (the penalty is per sample).
"""
from jaxgan.config import adam, base_config


def get_config():
    c = base_config()
    c.data.name = "ring"
    c.model.arch = "mlp"
    c.model.z_dim = 2
    c.model.hidden = (256, 256, 256)
    c.model.g_norm = "none"
    c.model.d_norm = "none"
    c.loss.name = "wgan-gp"
    c.loss.gp_weight = 10.0
    c.optim.g = adam(1e-4, 0.5, 0.9)
    c.optim.d = adam(1e-4, 0.5, 0.9)
    c.train.n_critic = 5
    c.train.steps = 4000
    c.train.batch_size = 256
    c.train.log_every = 200
    c.train.sample_every = 1000
    c.train.checkpoint_every = 2000
    return c
