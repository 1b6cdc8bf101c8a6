"""Semi-supervised GAN on MNIST with 100 labels (Salimans et al. 2016, "Improved Techniques").

The critic is a 10-class classifier (the paper's MLP 1000-500-250-250-250 with weight normalization
and Gaussian noise layers) whose real/fake logit is the logsumexp of its class logits; it is trained
on 100 labelled images (10 per class, drawn from the seed), the whole training split without
labels, and generated images. G (MLP 500-500, batch norm) is trained by feature matching.
    python -m jaxgan.train --config configs/mnist_ssgan.py --workdir runs/mnist_ssgan \\
        --config.data.data_dir=../shared/tensorflow_datasets --config.data.labelled=100
    python -m jaxgan.evaluate --workdir runs/mnist_ssgan      # accuracy/test on the test split
The test accuracy is also logged at every sample grid (metrics.jsonl: ssgan/test_accuracy).
"""
from jaxgan.config import adam, base_config


def get_config():
    c = base_config()
    c.data.name = "mnist"
    c.data.image_size = 28
    c.data.channels = 1
    c.data.labelled = 100
    c.model.arch = "mlp"
    c.model.num_classes = 10
    c.model.z_dim = 100
    c.model.hidden = (500, 500)     # the generator's hidden widths (Salimans et al.)
    c.model.d_hidden = (1000, 500, 250, 250, 250)  # the critic's (Salimans et al.)
    c.model.g_norm = "batch"
    c.loss.name = "ssgan"
    c.optim.g = adam(3e-3, 0.5, 0.999)  # Salimans et al.: lr 0.003, beta1 0.5, batch 100
    c.optim.d = adam(3e-3, 0.5, 0.999)
    c.optim.schedule = "linear"
    c.train.d_ema_decay = 0.9995    # the classifier evaluated is the critic's EMA (the paper: 0.9999)
    c.train.batch_size = 100
    c.train.steps = 60000           # 100 epochs of the 60000 unlabelled images (the paper: 300)
    c.train.log_every = 100
    c.train.sample_every = 3000     # test accuracy and a sample grid every 5 epochs
    c.train.checkpoint_every = 6000
    c.train.steps_per_call = 20
    return c
