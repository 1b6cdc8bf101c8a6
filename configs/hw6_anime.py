"""ML2022 HW6 (anime faces): DCGAN on a folder of 96x96 JPGs, trained at 64x64 RGB.

The HW6 model exactly: DCGAN generator and discriminator, feature_dim 64, 5x5 transposed convs
(padding 2, output_padding 1), batch norm in both, z 100, batch 64, Adam(1e-4, b1 0.5, b2 0.999),
the original GAN loss (BCE on logits), one critic update per generator update, 50 epochs.

    python -m jaxgan.train --config configs/hw6_anime.py --config.data.path=DIR --workdir runs/hw6

Unreadable files in DIR are skipped and counted in the log; the decoded faces are cached (under
$JAXGAN_CACHE_DIR, default ~/.cache/jaxgan), so the second run starts in seconds.
"""
from jaxgan.config import adam, base_config

HW6_IMAGES = 71_314  # faces in the HW6 crypko folder


def get_config():
    c = base_config()
    c.data.name = "folder"
    c.data.path = ""                # required: --config.data.path=DIR (the HW6 "faces" folder)
    c.data.image_size = 64          # HW6: transforms.Resize(64) of the 96x96 faces
    c.data.channels = 3
    c.model.arch = "dcgan"
    c.model.z_dim = 100
    c.model.g_width = 64            # HW6 feature_dim
    c.model.d_width = 64
    c.model.g_kernel = 5            # HW6 ConvTranspose2d(kernel 5, stride 2, padding 2, output_padding 1)
    c.model.g_norm = "batch"
    c.model.d_norm = "batch"
    c.loss.name = "gan"             # HW6: nn.BCELoss on the discriminator's sigmoid
    c.optim.g = adam(1e-4, 0.5, 0.999)
    c.optim.d = adam(1e-4, 0.5, 0.999)
    c.train.batch_size = 64
    c.train.n_critic = 1
    c.train.steps = 50 * (HW6_IMAGES // 64)   # 50 epochs, incomplete last batch dropped: 55,700
    c.train.log_every = 100
    c.train.sample_every = 1000
    c.train.checkpoint_every = 2000
    return c
