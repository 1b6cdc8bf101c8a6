"""DCGAN on stacked MNIST: three MNIST digits in the R, G and B channels, 1000 modes.

The mode-collapse benchmark of Metz et al. 2017 (unrolled GANs), VEEGAN (Srivastava et al.
2017) and PacGAN (Lin et al. 2018): 128,000 stacked examples built reproducibly from the seed,
label = 100 * red digit + 10 * green digit + blue digit. Count the modes a generator covers with
an MNIST classifier on each channel.

Reads prepared TFDS MNIST offline, e.g.
    python -m jaxgan.train --config configs/stacked_mnist.py \\
        --config.data.data_dir=../shared/tensorflow_datasets --workdir runs/stacked_mnist
"""
from jaxgan.config import adam, base_config


def get_config():
    c = base_config()
    c.data.name = "stacked_mnist"
    c.data.split = "train"          # the MNIST split the digits are drawn from
    c.data.data_dir = ""            # TFDS data_dir holding mnist/3.0.1 ("" = $TFDS_DATA_DIR or ~/tensorflow_datasets)
    c.data.image_size = 32          # 28x28 digits resized to 32 so DCGAN doubles from 4x4
    c.data.channels = 3
    c.model.arch = "dcgan"          # Radford et al. 2016
    c.model.z_dim = 100
    c.model.g_width = 64
    c.model.d_width = 64
    c.model.g_norm = "batch"
    c.model.d_norm = "batch"
    c.loss.name = "gan"
    c.optim.g = adam(2e-4, 0.5, 0.999)
    c.optim.d = adam(2e-4, 0.5, 0.999)
    c.train.batch_size = 64
    c.train.steps = 20 * (128_000 // 64)    # 20 epochs of the 128,000 stacked examples
    c.train.log_every = 100
    c.train.sample_every = 1000
    c.train.checkpoint_every = 2000
    return c
