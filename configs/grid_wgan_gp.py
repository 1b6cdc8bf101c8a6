"""WGAN-GP with a categorical latent code on the 25-Gaussian grid (PacGAN geometry: modes at
{-4, -2, 0, 2, 4}^2, sigma 0.05).

The ring recipe's WGAN-GP (lambda 0.1 as in the WGAN-GP authors' toy script, n_critic 5, Adam 1e-3
b2 0.9 decayed linearly to 0, G EMA 0.999) plus `model.z_categories=50`: G's input is a one-hot
category read off z's first coordinate and two Gaussian coordinates. A continuous map of a
Gaussian leaves lines of samples between the 25 disjoint modes (70% high quality after 4000
steps); with a discrete input G jumps between them (BUILD_NOTES.md, mode-collapse study).
    python -m jaxgan.train --config configs/grid_wgan_gp.py --workdir runs/grid
    python -m jaxgan.sample --workdir runs/grid --num 2500 --out s.npz
    python -m jaxgan.evaluate --samples s.npz --dataset grid
"""
from jaxgan.config import adam, base_config


def get_config():
    c = base_config()
    c.data.name = "grid"
    c.model.arch = "mlp"
    c.model.z_dim = 3               # z_0 picks the category, z_1 and z_2 stay Gaussian
    c.model.z_categories = 50
    c.model.hidden = (256, 256, 256)
    c.model.g_norm = "none"
    c.model.d_norm = "none"
    c.loss.name = "wgan-gp"
    c.loss.gp_weight = 0.1
    c.optim.g = adam(1e-3, 0.5, 0.9)
    c.optim.d = adam(1e-3, 0.5, 0.9)
    c.optim.schedule = "linear"
    c.train.ema_decay = 0.999
    c.train.n_critic = 5
    c.train.steps = 8000
    c.train.batch_size = 256
    c.train.steps_per_call = 50
    c.train.log_every = 200
    c.train.sample_every = 1000
    c.train.checkpoint_every = 1000
    return c
