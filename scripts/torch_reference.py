"""The PyTorch reference for scripts/benchmark.py: the NTU ML2022 HW6 DCGAN and its training step.

Benchmark-only (torch is the `bench` extra, never imported by jaxgan). The architecture, init and
step mirror what jaxgan computes for configs/hw6_anime.py:

  Generator   Linear(z, 512*4*4, bias=False) + BatchNorm1d + ReLU, reshape to 512x4x4, then
              3x [ConvTranspose2d(k=5, s=2, p=2, output_padding=1, bias=False) + BN + ReLU]
              halving the channels, and ConvTranspose2d(64 -> 3) + tanh.    (HW6 Generator)
  Critic      Conv2d(3, 64, 4, 2, 1) + LeakyReLU(0.2), 3x [Conv2d(4, 2, 1) + norm + LeakyReLU],
              Conv2d(512, 1, 4) -> one logit.  norm: BatchNorm2d (HW6) or LayerNorm([C, H, W])
              (the WGAN-GP critic; jaxgan's model.d_norm='layer').  No sigmoid: the GAN loss is
              BCE-with-logits, as jaxgan's softplus form.
  Init        HW6 `weights_init`: conv weights N(0, 0.02), batch-norm scale N(1, 0.02), bias 0.
  Step        n_critic critic updates (each: a fresh real batch, G(z) in train mode without a
              graph, D(real), D(fake), loss (+ gradient penalty via autograd.grad with
              create_graph), Adam) then one generator update (G(z), D(G(z)) in train mode, loss,
              Adam; D's weights frozen so only G's gradients are computed), like
              jaxgan.step.  Real batches: uint8 images resident on the device, gathered by
              random index and scaled to [-1, 1] inside the step, as jaxgan gathers.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def weights_init(m: nn.Module) -> None:
    """HW6 weights_init (DCGAN, Radford et al. 2016)."""
    name = m.__class__.__name__
    if name.find("Conv") != -1:
        m.weight.data.normal_(0.0, 0.02)
    elif name.find("BatchNorm") != -1:
        m.weight.data.normal_(1.0, 0.02)
        m.bias.data.fill_(0)


class Generator(nn.Module):
    """HW6 generator: z [B, in_dim] -> images [B, 3, 64, 64] in [-1, 1]."""

    def __init__(self, in_dim: int = 100, feature_dim: int = 64):
        super().__init__()
        self.l1 = nn.Sequential(
            nn.Linear(in_dim, feature_dim * 8 * 4 * 4, bias=False),
            nn.BatchNorm1d(feature_dim * 8 * 4 * 4),
            nn.ReLU())
        self.l2 = nn.Sequential(
            self.dconv_bn_relu(feature_dim * 8, feature_dim * 4),
            self.dconv_bn_relu(feature_dim * 4, feature_dim * 2),
            self.dconv_bn_relu(feature_dim * 2, feature_dim))
        self.l3 = nn.Sequential(
            nn.ConvTranspose2d(feature_dim, 3, kernel_size=5, stride=2, padding=2,
                               output_padding=1, bias=False),
            nn.Tanh())
        self.feature_dim = feature_dim
        self.apply(weights_init)

    @staticmethod
    def dconv_bn_relu(in_dim: int, out_dim: int) -> nn.Sequential:
        return nn.Sequential(
            nn.ConvTranspose2d(in_dim, out_dim, kernel_size=5, stride=2, padding=2,
                               output_padding=1, bias=False),
            nn.BatchNorm2d(out_dim),
            nn.ReLU(True))

    def forward(self, z):
        y = self.l1(z).view(z.size(0), -1, 4, 4)
        return self.l3(self.l2(y))


class Discriminator(nn.Module):
    """HW6 discriminator without the final sigmoid: images [B, 3, 64, 64] -> logits [B]."""

    def __init__(self, in_dim: int = 3, feature_dim: int = 64, norm: str = "batch"):
        super().__init__()

        def block(cin, cout, size):
            if norm == "batch":
                n = nn.BatchNorm2d(cout)
            elif norm == "layer":
                n = nn.LayerNorm([cout, size, size], eps=1e-5)
            else:
                raise ValueError(norm)
            return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1), n, nn.LeakyReLU(0.2))

        self.l1 = nn.Sequential(
            nn.Conv2d(in_dim, feature_dim, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            block(feature_dim, feature_dim * 2, 16),
            block(feature_dim * 2, feature_dim * 4, 8),
            block(feature_dim * 4, feature_dim * 8, 4),
            nn.Conv2d(feature_dim * 8, 1, kernel_size=4, stride=1, padding=0))
        self.apply(weights_init)

    def forward(self, x):
        return self.l1(x).view(-1)


def make_step(loss: str = "gan", batch: int = 64, n_critic: int = 1, z_dim: int = 100,
              lr: float = 1e-4, betas=(0.5, 0.999), gp_weight: float = 10.0,
              device: str = "cpu", amp_dtype=None, channels_last: bool = False,
              compile_mode: str | None = None, num_images: int = 1024, seed: int = 0):
    """(step, models): `step()` runs one full training step (n_critic + 1 updates) and returns
    the detached losses; nothing is copied to the host (call torch.cuda.synchronize to time).

    amp_dtype: None (f32) or torch.bfloat16 / torch.float16 for autocast (params stay f32).
    compile_mode: None (eager) or a torch.compile mode ('default', 'max-autotune', ...);
    the models' forward functions are compiled, backward runs through AOTAutograd.
    """
    torch.manual_seed(seed)
    dev = torch.device(device)
    d_norm = "layer" if loss == "wgan-gp" else "batch"
    G = Generator(z_dim).to(dev)
    D = Discriminator(3, 64, d_norm).to(dev)
    if channels_last:
        G = G.to(memory_format=torch.channels_last)
        D = D.to(memory_format=torch.channels_last)
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=betas, eps=1e-8)
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=betas, eps=1e-8)
    G.train()
    D.train()
    g_fwd, d_fwd = G, D
    if compile_mode is not None:
        g_fwd = torch.compile(G, mode=compile_mode)
        d_fwd = torch.compile(D, mode=compile_mode)
    images = torch.randint(0, 256, (num_images, 3, 64, 64), dtype=torch.uint8, device=dev)
    autocast = (torch.autocast(device_type=dev.type, dtype=amp_dtype) if amp_dtype is not None
                else None)

    def ctx():
        return autocast if autocast is not None else _null()

    def real_batch():
        idx = torch.randint(0, num_images, (batch,), device=dev)
        x = images[idx].float().div_(127.5).sub_(1.0)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def critic_loss(real, fake):
        with ctx():
            r, f = d_fwd(real), d_fwd(fake)
        r, f = r.float(), f.float()
        if loss == "gan":
            return (F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
                    + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f)))
        value = f.mean() - r.mean()
        if loss == "wgan-gp":
            eps = torch.rand(batch, 1, 1, 1, device=dev)
            xhat = (eps * real + (1 - eps) * fake).requires_grad_(True)
            with ctx():
                out = d_fwd(xhat)
            (grad,) = torch.autograd.grad(out.float().sum(), xhat, create_graph=True)
            norms = torch.sqrt(grad.float().flatten(1).square().sum(1) + 1e-12)
            value = value + gp_weight * (norms - 1.0).square().mean()
        return value

    def generator_loss(out):
        out = out.float()
        if loss == "gan":  # non-saturating
            return F.binary_cross_entropy_with_logits(out, torch.ones_like(out))
        return -out.mean()

    def step():
        for _ in range(n_critic):
            real = real_batch()
            z = torch.randn(batch, z_dim, device=dev)
            with torch.no_grad(), ctx():
                fake = g_fwd(z).float()
            d_loss = critic_loss(real, fake)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        z = torch.randn(batch, z_dim, device=dev)
        D.requires_grad_(False)  # only G's gradients, as jax.grad w.r.t. g_params computes
        with ctx():
            out = d_fwd(g_fwd(z))
        g_loss = generator_loss(out)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        D.requires_grad_(True)
        return d_loss.detach(), g_loss.detach()

    return step, (G, D)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
