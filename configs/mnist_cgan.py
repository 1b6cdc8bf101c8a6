"""Class-conditional DCGAN on MNIST: conditional batch norm in G, projection critic.

G gets the label through conditional batch norm (per-class scale and shift), the critic through
the projection term <embed(y), phi(x)> (Miyato & Koyama 2018); the critic is trained on real
images with their labels against fakes asked for the same labels. Samples use an EMA of G.
    python -m jaxgan.train --config configs/mnist_cgan.py --workdir runs/mnist_cgan \\
        --config.data.data_dir=../shared/tensorflow_datasets
    python -m jaxgan.sample --workdir runs/mnist_cgan --labels 0,1,2,3,4,5,6,7,8,9 --num 100 \\
        --out rows.png
Measured by the share of samples the MNIST classifier assigns to the requested class
(`python -m jaxgan.evaluate --workdir runs/mnist_cgan --classifier ...`: classifier/label_accuracy).
"""
from jaxgan.config import adam, base_config


def get_config():
    c = base_config()
    c.data.name = "mnist"
    c.data.image_size = 28
    c.data.channels = 1
    c.model.arch = "dcgan"
    c.model.z_dim = 100
    c.model.g_width = 32
    c.model.d_width = 32
    c.model.g_norm = "batch"
    c.model.d_norm = "batch"
    c.model.num_classes = 10
    c.model.g_cond = "cbn"
    c.model.d_cond = "projection"
    c.loss.name = "gan"
    c.optim.g = adam(2e-4, 0.5, 0.999)
    c.optim.d = adam(2e-4, 0.5, 0.999)
    c.train.ema_decay = 0.999
    c.train.batch_size = 64
    c.train.steps = 3000
    c.train.log_every = 100
    c.train.sample_every = 500
    c.train.checkpoint_every = 1000
    return c
