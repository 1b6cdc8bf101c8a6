"""DCGAN (Radford et al. 2016) on MNIST resized to 32x32: the original GAN loss, non-saturating G.

Reads prepared TFDS MNIST without TensorFlow:
    python -m jaxgan.train --config configs/mnist_gan.py --workdir runs/mnist_gan \\
        --config.data.data_dir=../shared/tensorflow_datasets
Widths are halved from the paper's 64 so that a CPU run finishes in under half an hour. The digits are
resized to 32x32 (as PyTorch's DCGAN examples do) so that G has three transposed convolutions
(4 -> 8 -> 16 -> 32) and the critic three strided ones: at 28x28 both get only two (7 -> 14 -> 28)
and the samples plateaued at classifier FD ~80-120 with 8 of 10 classes; at 32x32 the same
widths reach FD 26 with 10/10 classes in 2000 steps, 18 in 4000 (BUILD_NOTES.md).

It trains as InfoGAN does on MNIST (Chen et al. 2016): G draws a 10-way categorical code that a
Q head on the critic reads back (lambda 1), and G learns at 1e-3 against the critic's 2e-4. Over
two seeds at 4000 steps (10000 samples) that took the classifier FD from 21.2 to 6.1-7.3, the
share of confidently classified digits from 48% to 82-84% (real digits at 32x32: 93%) and
coverage from 0.38 to 0.63, for recall 0.83 -> 0.61-0.67; G's learning rate alone gave 56%, the
code alone 59% (BUILD_NOTES.md, session 8). Most categories became one digit there:
`jaxgan.sample --labels 0,1,2,3,4,5,6,7,8,9` shows them. For the plain DCGAN set
`--config.loss.info_weight=0 --config.model.z_categories=0 --config.optim.g.lr=2e-4
--config.model.d_norm=batch --config.loss.r1_weight=0`.

Since session 11 the critic uses layer norm instead of batch norm and the R1 penalty on real
digits (Mescheder et al. 2018, gamma 1), and trains 8000 steps: with the batch-norm critic
longer runs gained confidence but lost diversity (8000 steps: recall 0.40); with R1 both rise.
10000 samples at 8000 steps, two seeds: 86-87% confident (was 80-82%), classifier FD 2.0-2.5
(was 6-11), recall 0.78-0.82, coverage 0.79 (was 0.55-0.67), all ten classes. R1 differentiates
the critic a second time; 8000 steps took 25 minutes on 2 CPU cores; `--config.train.steps=4000`
halves that for 80% confident, FD 3.4, recall 0.77 (seed 0; BUILD_NOTES.md, session 11).
"""
from jaxgan.config import adam, base_config


def get_config():
    c = base_config()
    c.data.name = "mnist"
    c.data.split = "train"
    c.data.image_size = 32          # 4x4 -> 8x8 -> 16x16 -> 32x32
    c.data.channels = 1
    c.model.arch = "dcgan"
    c.model.z_dim = 100
    c.model.g_width = 32
    c.model.d_width = 32
    c.model.g_norm = "batch"
    c.model.d_norm = "layer"        # per-example, as R1 needs (a batch-norm critic mixes examples)
    c.loss.name = "gan"
    c.loss.generator = "non_saturating"
    c.model.z_categories = 10       # InfoGAN: a categorical code ...
    c.loss.info_weight = 1.0        # ... that the critic's Q head reads back
    c.loss.r1_weight = 1.0          # R1: gamma/2 E||grad D(x_real)||^2 keeps the critic smooth
    c.optim.g = adam(1e-3, 0.5, 0.999)   # InfoGAN's rates: G 1e-3, D 2e-4 (DCGAN's 2e-4)
    c.optim.d = adam(2e-4, 0.5, 0.999)
    c.train.batch_size = 64
    c.train.n_critic = 1
    c.train.ema_decay = 0.999       # samples and evaluation use an EMA of G
    c.train.steps = 8000            # ~8.5 epochs
    c.train.log_every = 100
    c.train.sample_every = 500
    c.train.checkpoint_every = 1000
    return c
