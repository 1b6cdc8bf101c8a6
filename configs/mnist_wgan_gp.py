"""WGAN-GP (Gulrajani et al. 2017) on MNIST resized to 32x32.

lambda = 10, n_critic = 5, Adam(b1 0.5, b2 0.9); the critic uses layer norm because a batch-norm
critic breaks the per-sample gradient penalty (the paper's recommendation). To get digits in a
few thousand CPU-sized steps (the paper ran 200k) it takes larger learning rates than the
paper's 1e-4 (below), decays them linearly to 0 (as the paper's CIFAR-10 runs do) and samples
from an EMA of the generator. The generator has the paper's width 64 (its critic is kept at 32
for CPU time). The digits are resized to 32x32 so that G and the critic each get three
stride-2 layers (the paper's MNIST nets have three too): at 28x28 they get two and the recipe
reached classifier FD 55 in 3000 steps; at 32x32 FD 23 after 1000 steps (BUILD_NOTES.md).

G also draws a 10-way categorical code that a Q head on the critic reads back (InfoGAN's
mutual-information term, Chen et al. 2016, lambda 1) and learns at InfoGAN's 1e-3. At 2000 steps
(10000 samples) the code alone took the classifier FD from 16.5 to 10.1-11.9 and the confident
share from 43% to 56% (two seeds); with the faster G, FD 3.3, 69-71% confident, coverage 0.70
(0.39-0.40 plain) and recall 0.88 (0.91 plain), two seeds (BUILD_NOTES.md, session 8). The
critic then learns at 4e-4 rather than 2e-4: FD 2.47 -> 2.27 / 1.97, precision 0.78 -> 0.83,
coverage 0.72 -> 0.78, recall 0.88 -> 0.89, 75-77% confident (two seeds; session 9, another
classifier). Trained for 4000 steps instead of 2000 (the decay stretched over them; twice the
CPU time) it reaches FD 0.66-0.89 and 85-86% confident digits, precision 0.89-0.90, recall
0.89-0.90, coverage 0.88 (two seeds, session 10; real 32x32 digits: 93%, 0.95, 0.94, 0.96), so
4000 is the default. `--config.train.steps=2000` stops half way down the same 4000-step decay
(`optim.decay_steps`; before session 11 it decayed over 2000 steps, the numbers above): 79%
confident, FD 1.47, recall 0.88, coverage 0.80-0.82 (two seeds, session 11, Intel box).
`jaxgan.sample --labels 0,1,...,9` shows what each category became. For the paper's plain
WGAN-GP set `--config.loss.info_weight=0 --config.model.z_categories=0
--config.optim.g.lr=2e-4 --config.optim.d.lr=2e-4`.
"""
from jaxgan.config import adam, base_config


def get_config():
    c = base_config()
    c.data.name = "mnist"
    c.data.image_size = 32          # 4x4 -> 8x8 -> 16x16 -> 32x32
    c.data.channels = 1
    c.model.arch = "dcgan"
    c.model.g_width = 64            # Gulrajani et al.'s MNIST DIM
    c.model.d_width = 32
    c.model.g_norm = "batch"
    c.model.d_norm = "layer"
    c.loss.name = "wgan-gp"
    c.loss.gp_weight = 10.0
    c.model.z_categories = 10       # InfoGAN: a categorical code ...
    c.loss.info_weight = 1.0        # ... that the critic's Q head reads back
    c.optim.g = adam(1e-3, 0.5, 0.9)   # InfoGAN's G rate
    c.optim.d = adam(4e-4, 0.5, 0.9)
    c.optim.schedule = "linear"
    c.optim.decay_steps = 4000      # a shorter run stops part way down the 4000-step decay
    c.train.ema_decay = 0.999
    c.train.n_critic = 5
    c.train.batch_size = 64
    c.train.steps = 4000            # 2000 halves the time: 79% confident, not 85-86%
    c.train.log_every = 100
    c.train.sample_every = 250
    c.train.checkpoint_every = 250
    return c
