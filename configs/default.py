"""The default recipe: `python -m jaxgan.train` with no flags.

DCGAN on scikit-learn's 1797 handwritten digits (8x8 scans shipped inside scikit-learn, so it
runs offline), upsampled to 16x16. A grid of recognizable digits in a few minutes on 2 CPU cores.
"""
from jaxgan.config import base_config


def get_config():
    c = base_config()
    c.data.name = "digits"
    c.data.image_size = 16
    c.data.channels = 1
    c.model.arch = "dcgan"
    c.model.g_width = 64
    c.model.d_width = 32
    c.loss.name = "gan"
    c.optim.d.lr = 1e-4             # half the generator's: on 1,797 images D otherwise wins early
    c.train.steps = 2500
    c.train.batch_size = 64
    c.train.log_every = 50
    c.train.sample_every = 250
    c.train.checkpoint_every = 500
    return c
