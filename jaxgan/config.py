"""The recipe schema: every hyper-parameter a user may change, with its paper default.

Recipes in `configs/` start from `base_config()` and change what they need. `validate()` runs
before anything is compiled or written, so a bad recipe costs a one-line error, not a run.
"""
from __future__ import annotations

import difflib
import importlib.util
import os

import ml_collections

LOSSES = ("gan", "wgan", "wgan-gp", "hinge", "ssgan")
NORMS = ("batch", "instance", "layer", "none")
ARCHS = ("mlp", "dcgan")
MIXTURES = ("ring", "grid")
SCHEDULES = ("constant", "linear", "cosine")
AUGMENTS = ("color", "translation", "cutout")  # jaxgan.augment.OPS
DTYPES = ("float32", "bfloat16")  # train.dtype: the models' compute dtype


class ConfigError(ValueError):
    """A recipe that cannot work; the message names the fix."""


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"          # digits (ships with scikit-learn), ring, grid, folder,
                                    # stacked_mnist, or a TFDS name (mnist, cifar10, celeb_a, ...)
    c.data.split = "train"
    c.data.data_dir = ""            # TFDS data_dir(s), ':'-separated; "" = $TFDS_DATA_DIR or
                                    # ~/tensorflow_datasets
    c.data.path = ""                # image folder for name="folder"
    c.data.image_size = 32
    c.data.channels = 1
    c.data.limit = 0                # use only the first N examples (0: all); for quick experiments
    c.data.labelled = 100           # loss.name='ssgan': labelled examples (equal per class); the
                                    # rest of the split is used without labels
    c.data.download = False         # prepare a missing TFDS dataset (needs jaxgan[prepare] and the
                                    # network); False: fail at once with the command to run
    c.data.num_examples = 128_000   # stacked_mnist: examples built from the seed (PacGAN, VEEGAN)
    c.data.device_budget_mb = 4096  # uint8 datasets up to this size live on the device and are
                                    # gathered in the step; larger ones stream (data.Prefetcher)

    c.model = ml_collections.ConfigDict()
    c.model.arch = "dcgan"          # mlp (Goodfellow et al. 2014) or dcgan (Radford et al. 2016)
    c.model.z_dim = 100
    c.model.g_width = 64            # DCGAN: channels of the last hidden layer (feature_dim in HW6)
    c.model.d_width = 64
    c.model.g_norm = "batch"
    c.model.d_norm = "batch"
    c.model.g_kernel = 4            # transposed-conv kernel; HW6 uses 5 (padding 2, output_padding 1)
    c.model.hidden = (512, 512)     # MLP widths: generator, and critic unless d_hidden
    c.model.d_hidden = ()           # MLP critic's hidden widths; () = model.hidden
    c.model.num_classes = 0         # > 0: class-conditional GAN on the dataset's labels
    c.model.g_cond = "embed"        # embed (label embedding appended to z) | cbn (conditional BN)
    c.model.d_cond = "projection"   # projection (Miyato & Koyama 2018) | concat (label planes)
    # mode-collapse remedies, all off by default
    c.model.d_spectral_norm = False  # spectral norm on every critic layer (Miyato et al. 2018)
    c.model.d_mbstd = 0             # minibatch-stddev group size before the critic's last layer
                                    # (Karras et al. 2018; ProGAN uses 4); 0: off
    c.model.pack = 1                # PacGAN: the critic judges packs of m samples (Lin et al. 2018)
    c.model.g_noise = False         # per-layer noise injection in G (StyleGAN, Karras et al. 2019)
    c.model.z_categories = 0        # K > 0: G's input is a K-way categorical code (read off z's
                                    # first coordinate) plus the other z_dim - 1 Gaussian ones, so
                                    # G may jump between disjoint modes (InfoGAN's categorical code;
                                    # DeLiGAN, GM-GAN); 0: off

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "gan"             # gan | wgan | wgan-gp | hinge | ssgan (semi-supervised:
                                    # a model.num_classes-way critic, Salimans et al. 2016)
    c.loss.unlabelled_weight = 1.0  # ssgan: weight of the unlabelled (real/fake) critic loss
    c.loss.generator = "non_saturating"  # gan only: non_saturating (-log D(G(z))) or minimax
    c.loss.gp_weight = 10.0         # wgan-gp lambda (Gulrajani et al. 2017)
    c.loss.clip = 0.01              # wgan weight clipping c (Arjovsky et al. 2017)
    c.loss.info_weight = 0.0        # InfoGAN lambda (Chen et al. 2016; 1 in the paper): a Q head
                                    # on the critic reads the model.z_categories code back and G
                                    # and Q minimise its cross-entropy, so G gives each category
                                    # its own mode (on MNIST: its own digit); 0: off
    c.loss.r1_weight = 0.0          # gamma of the R1 penalty gamma/2 E||grad D(x)||^2 on real data
                                    # (Mescheder et al. 2018), any loss; 0: off

    c.optim = ml_collections.ConfigDict()
    c.optim.g = _adam(2e-4, 0.5, 0.999)   # DCGAN (Radford et al. 2016)
    c.optim.d = _adam(2e-4, 0.5, 0.999)
    c.optim.schedule = "constant"   # learning rates: constant, linear (to 0 at train.steps) or cosine
    c.optim.decay_steps = 0         # a schedule decays over max(train.steps, this) generator
                                    # updates: a shorter run stops part way down a recipe's decay

    c.train = ml_collections.ConfigDict()
    c.train.steps = 2000            # generator updates
    c.train.batch_size = 64
    c.train.n_critic = 1            # critic updates per generator update
    c.train.log_every = 50
    c.train.sample_every = 500      # fixed-noise sample grid
    c.train.checkpoint_every = 1000
    c.train.keep_checkpoints = 3
    c.train.num_grid = 64           # images in each sample grid
    c.train.steps_per_call = 1      # steps fused into one compiled call (small models: 10-100)
    c.train.augment = ""            # DiffAugment policy for every critic input, e.g.
                                    # "color,translation,cutout" (Zhao et al. 2020); "": none
    c.train.ema_decay = 0.0         # EMA of G's weights and BN statistics for samples, grids,
                                    # evaluation and the saved generator (0: off; try 0.999);
                                    # the decay ramps as (1+t)/(10+t) up to this value, which it
                                    # reaches at t ~ 10/(1-decay): 0.999 after ~9000 steps
    c.train.old_critic_every = 0    # K > 0: every K-th generator update is made against the
                                    # critic as it was K steps before (a snapshot refreshed every
                                    # K steps: "go back to an old D"); 0: off
    c.train.replay_size = 0         # N > 0: a buffer of N old fakes; part of every critic fake
                                    # batch comes from it (Shrivastava et al. 2017); 0: off
    c.train.replay_fraction = 0.5   # share of each fake batch drawn from the replay buffer
    c.train.d_ema_decay = 0.0       # EMA of the critic's weights; ssgan evaluates and saves it as
                                    # its classifier (Salimans et al. test with 0.9999); 0: off
    c.train.critic_loop = "auto"    # n_critic loop: scan | unrolled | auto (unrolled on CPU)
    c.train.dtype = "float32"       # activations: float32 | bfloat16 (mixed precision for GPU/TPU;
                                    # params, optimizer states, losses and the penalty stay f32)

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 0                # evaluate every K steps during training (0: never)
    c.eval.num = 2000               # samples per evaluation
    c.eval.metrics = ""             # e.g. "modes", "classifier", "fid,kid"; "" = the dataset's default
    c.eval.best_metric = ""         # keep the best checkpoint by this metric in WORKDIR/best
    c.eval.classifier = ""          # path from `python -m jaxgan.evaluate train-classifier`
    c.eval.inception = ""           # FID Inception weights (.pth) or their cache directory
    return c


def load_recipe(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """get_config() of a recipe file (configs/NAME.py), as `--config path` loads it, for code
    that is not the CLI (tests, scripts)."""
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: not a Python recipe file (configs/NAME.py)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _adam(lr: float, b1: float, b2: float) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
            dict(name="adam", lr=lr, b1=b1, b2=b2, eps=1e-8, decay=0.99))


def rmsprop(lr: float) -> ml_collections.ConfigDict:
    """RMSprop as PyTorch defines it (alpha 0.99, eps 1e-8 outside the root)."""
    return ml_collections.ConfigDict(
            dict(name="rmsprop", lr=lr, b1=0.0, b2=0.0, eps=1e-8, decay=0.99))


adam = _adam


def critic_hidden(config) -> tuple[int, ...]:
    """The MLP critic's hidden widths: model.d_hidden, or model.hidden when it is empty (and in
    recipes saved before the key)."""
    return tuple(config.model.get("d_hidden", ())) or tuple(config.model.hidden)


def is_mixture(config) -> bool:
    return config.data.name in MIXTURES


def check_keys(config, reference=None, prefix="") -> None:
    """Unknown keys are typos: name the nearest valid one."""
    reference = base_config() if reference is None else reference
    for key in config.keys():
        if key not in reference:
            near = difflib.get_close_matches(key, list(reference.keys()), n=1)
            hint = f"; did you mean '{prefix}{near[0]}'?" if near else ""
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
        value, ref = config[key], reference[key]
        if isinstance(ref, ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise ConfigError(f"config key '{prefix}{key}' must be a group, got {value!r}")
            check_keys(value, ref, prefix=f"{prefix}{key}.")
        else:
            _check_type(f"{prefix}{key}", value, ref)


def _check_type(name: str, value, ref) -> None:
    """A value of the reference's kind: int for int, number for float, str, bool, sequence."""
    if isinstance(ref, bool):
        ok = isinstance(value, bool)
    elif isinstance(ref, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(ref, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(ref, str):
        ok = isinstance(value, str)
    elif isinstance(ref, (tuple, list)):
        ok = isinstance(value, (tuple, list))
    else:
        ok = True
    if not ok:
        raise ConfigError(f"config key '{name}' must be {type(ref).__name__} like {ref!r}, "
                          f"got {value!r}")


def image_base(size: int) -> int:
    """The starting resolution of a DCGAN that doubles up to `size` (4 or 7)."""
    for base in (4, 7):
        s = size
        while s > base and s % 2 == 0:
            s //= 2
        if s == base and size > base:
            return base
    raise ConfigError(
            f"data.image_size={size} cannot be built by doubling from 4x4 or 7x7; "
            "use 16, 28, 32, 56, 64 or 128, or set model.arch='mlp'")


def _validate_ssgan(c) -> None:
    if int(c.model.num_classes) < 2:
        raise ConfigError("loss.name='ssgan' trains a K-class critic: set model.num_classes=K "
                          "(10 for MNIST)")
    if is_mixture(c):
        raise ConfigError("loss.name='ssgan' needs a labelled image dataset, not 2D points")
    if c.model.arch != "mlp":
        raise ConfigError("loss.name='ssgan' uses Salimans et al.'s MLP critic: set "
                          "model.arch='mlp' (model.hidden sets G's and the critic's widths)")
    if int(c.data.labelled) < 1 or int(c.data.labelled) % int(c.model.num_classes):
        raise ConfigError(f"data.labelled={c.data.labelled}; use a positive multiple of "
                          f"model.num_classes={c.model.num_classes} (equal labels per class)")
    remedies = [k for k, off in (("d_spectral_norm", False), ("d_mbstd", 0), ("pack", 1),
                                 ("g_noise", False)) if c.model[k] != off]
    if remedies:
        raise ConfigError(f"model.{remedies[0]} changes the GAN critic or generator; the ssgan "
                          "recipe uses Salimans et al.'s critic design: leave it at its default")
    if int(c.eval.every) and (not c.eval.metrics.strip() or "accuracy" in c.eval.metrics):
        raise ConfigError("ssgan logs its critic's test accuracy at every sample grid "
                          "(train.sample_every); eval.every scores samples of G: set "
                          "eval.metrics=classifier (or fid,...) or eval.every=0")
    if int(c.train.n_critic) != 1 or c.train.augment.strip() or float(c.loss.r1_weight) > 0:
        raise ConfigError("loss.name='ssgan' makes one critic update per step without "
                          "augmentation or R1: set train.n_critic=1, train.augment='', "
                          "loss.r1_weight=0")


def validate(config) -> None:
    """Raises ConfigError with a one-line message for recipes that cannot work."""
    check_keys(config)
    c = config
    if c.loss.name not in LOSSES:
        raise ConfigError(f"loss.name={c.loss.name!r}; choose one of {', '.join(LOSSES)}")
    if c.loss.generator not in ("non_saturating", "minimax"):
        raise ConfigError("loss.generator must be 'non_saturating' or 'minimax'")
    if c.model.arch not in ARCHS:
        raise ConfigError(f"model.arch={c.model.arch!r}; choose one of {', '.join(ARCHS)}")
    for side in ("g_norm", "d_norm"):
        if c.model[side] not in NORMS:
            raise ConfigError(f"model.{side}={c.model[side]!r}; choose one of {', '.join(NORMS)}")
    if c.loss.name == "wgan-gp" and c.model.d_norm == "batch":
        raise ConfigError(
                "critic uses batch norm, which breaks the per-sample gradient penalty; "
                "set model.d_norm='layer' (or 'instance' / 'none')")
    if c.model.arch == "mlp" and "instance" in (c.model.g_norm, c.model.d_norm):
        raise ConfigError("instance norm needs feature maps; use 'batch', 'layer' or 'none' with mlp")
    if int(c.train.n_critic) < 1:
        raise ConfigError(f"train.n_critic={c.train.n_critic}; it must be at least 1")
    for name in ("steps", "batch_size", "log_every", "sample_every", "checkpoint_every",
                 "keep_checkpoints", "num_grid", "steps_per_call"):
        if int(c.train[name]) < 1:
            raise ConfigError(f"train.{name}={c.train[name]}; it must be at least 1")
    if int(c.eval.every) < 0 or int(c.eval.num) < 1:
        raise ConfigError("eval.every must be >= 0 and eval.num >= 1")
    if c.eval.best_metric and int(c.eval.every) == 0:
        raise ConfigError("eval.best_metric needs periodic evaluation: set eval.every=K")
    if c.train.critic_loop not in ("auto", "scan", "unrolled"):
        raise ConfigError(f"train.critic_loop={c.train.critic_loop!r}; use auto, scan or unrolled")
    if c.train.dtype not in DTYPES:
        raise ConfigError(f"train.dtype={c.train.dtype!r}; use 'float32' or 'bfloat16' "
                          "(mixed precision: bfloat16 activations, float32 params)")
    for key in ("hidden", "d_hidden"):
        widths = tuple(c.model[key])
        if not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
            raise ConfigError(f"model.{key}={widths!r}; use positive integer widths")
    if float(c.loss.r1_weight) < 0:
        raise ConfigError(f"loss.r1_weight={c.loss.r1_weight}; the R1 weight must be >= 0")
    if float(c.loss.r1_weight) > 0 and c.model.d_norm == "batch":
        raise ConfigError("the R1 penalty is per example and a batch-norm critic mixes examples; "
                          "set model.d_norm='layer' (or 'instance' / 'none')")
    if float(c.loss.gp_weight) < 0:
        raise ConfigError(f"loss.gp_weight={c.loss.gp_weight}; the penalty weight must be >= 0")
    if c.loss.name == "ssgan":
        _validate_ssgan(c)
    if int(c.model.num_classes) < 0:
        raise ConfigError(f"model.num_classes={c.model.num_classes}; use 0 (unconditional) or the "
                          "number of classes")
    if c.model.g_cond not in ("embed", "cbn"):
        raise ConfigError(f"model.g_cond={c.model.g_cond!r}; use 'embed' or 'cbn'")
    if c.model.d_cond not in ("projection", "concat"):
        raise ConfigError(f"model.d_cond={c.model.d_cond!r}; use 'projection' or 'concat'")
    if int(c.model.num_classes) and c.model.g_cond == "cbn" and c.model.g_norm != "batch":
        raise ConfigError("model.g_cond='cbn' is conditional batch norm: it needs "
                          "model.g_norm='batch' (or use g_cond='embed')")
    if int(c.model.num_classes) and is_mixture(c):
        raise ConfigError(f"model.num_classes needs a labelled image dataset; {c.data.name!r} "
                          "points have no labels")
    if int(c.model.d_mbstd) < 0:
        raise ConfigError(f"model.d_mbstd={c.model.d_mbstd}; use 0 (off) or a group size such as 4")
    if int(c.model.pack) < 1:
        raise ConfigError(f"model.pack={c.model.pack}; use 1 (off) or the samples per pack, e.g. 2")
    if int(c.train.batch_size) % int(c.model.pack):
        raise ConfigError(f"train.batch_size={c.train.batch_size} is not a multiple of "
                          f"model.pack={c.model.pack}; make it one")
    if int(c.model.pack) > 1 and int(c.model.num_classes):
        raise ConfigError("a pack of samples has no single label: use model.pack=1 with "
                          "model.num_classes, or num_classes=0 with packing")
    if int(c.model.z_dim) < 1:
        raise ConfigError(f"model.z_dim={c.model.z_dim}; it must be at least 1")
    if int(c.model.z_categories) < 0 or int(c.model.z_categories) == 1:
        raise ConfigError(f"model.z_categories={c.model.z_categories}; use 0 (off) or K >= 2 "
                          "categories")
    if int(c.model.z_categories) and int(c.model.z_dim) < 2:
        raise ConfigError("model.z_categories reads the category off z's first coordinate and "
                          "keeps the others Gaussian: set model.z_dim >= 2")
    if float(c.loss.info_weight) < 0:
        raise ConfigError(f"loss.info_weight={c.loss.info_weight}; use 0 (off) or a weight "
                          "such as 1")
    if float(c.loss.info_weight) > 0:
        if int(c.model.z_categories) < 2:
            raise ConfigError("loss.info_weight reads back G's categorical code: set "
                              "model.z_categories (e.g. 10)")
        if (int(c.model.pack) > 1 or int(c.model.num_classes) or c.loss.name == "ssgan"
                or int(c.train.replay_size)):  # a replayed fake's code is not known
            raise ConfigError("loss.info_weight (InfoGAN) needs an unconditional, unpacked "
                              "critic that sees fresh fakes: model.num_classes=0, model.pack=1, "
                              "train.replay_size=0, not loss.name='ssgan'")
    for side in ("g", "d"):
        o = c.optim[side]
        if o.name not in ("adam", "rmsprop"):
            raise ConfigError(f"optim.{side}.name={o.name!r}; choose 'adam' or 'rmsprop'")
        if not float(o.lr) > 0:
            raise ConfigError(f"optim.{side}.lr={o.lr}; it must be positive")
    unknown = [p for p in c.train.augment.split(",") if p.strip() and p.strip() not in AUGMENTS]
    if unknown:
        raise ConfigError(f"train.augment has {unknown[0].strip()!r}; use a comma-separated subset "
                          f"of {', '.join(AUGMENTS)}")
    if c.train.augment.strip() and is_mixture(c):
        raise ConfigError("train.augment (DiffAugment) transforms images; 2D points have none")
    if not 0.0 <= float(c.train.ema_decay) < 1.0:
        raise ConfigError(f"train.ema_decay={c.train.ema_decay}; use 0 (off) or a decay in (0, 1) "
                          "such as 0.999")
    if not 0.0 <= float(c.train.d_ema_decay) < 1.0:
        raise ConfigError(f"train.d_ema_decay={c.train.d_ema_decay}; use 0 (off) or a decay in "
                          "(0, 1) such as 0.999")
    if float(c.train.d_ema_decay) > 0 and c.loss.name != "ssgan":
        raise ConfigError("train.d_ema_decay averages the semi-supervised critic (loss.name="
                          "'ssgan'); for samples average the generator: train.ema_decay")
    if int(c.train.old_critic_every) < 0 or int(c.train.replay_size) < 0:
        raise ConfigError("train.old_critic_every and train.replay_size must be >= 0 (0: off)")
    if int(c.train.replay_size):
        n_old = int(float(c.train.replay_fraction) * int(c.train.batch_size))
        if not 0 < n_old < int(c.train.batch_size):
            raise ConfigError(f"train.replay_fraction={c.train.replay_fraction} draws {n_old} of "
                              f"the {c.train.batch_size} fakes from the buffer; use a fraction "
                              "in (0, 1) such as 0.5")
        if int(c.train.replay_size) < int(c.train.batch_size):
            raise ConfigError(f"train.replay_size={c.train.replay_size} is smaller than one "
                              f"batch ({c.train.batch_size}); use a few batches' worth or more")
        if int(c.model.num_classes):
            raise ConfigError("old fakes in the replay buffer have no labels for a conditional "
                              "critic: set train.replay_size=0 with model.num_classes")
    if c.optim.schedule not in SCHEDULES:
        raise ConfigError(f"optim.schedule={c.optim.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if int(c.optim.decay_steps) < 0:
        raise ConfigError(f"optim.decay_steps={c.optim.decay_steps}; use 0 (decay over "
                          "train.steps) or a positive number of generator updates")
    if c.loss.name == "wgan" and not float(c.loss.clip) > 0:
        raise ConfigError(f"loss.clip={c.loss.clip}; wgan needs a positive clipping bound")
    if is_mixture(c):
        if c.model.arch != "mlp":
            raise ConfigError(f"data.name={c.data.name!r} is 2D points; a conv model cannot "
                              "take them: set model.arch='mlp'")
    else:
        if c.data.channels not in (1, 3):
            raise ConfigError(f"data.channels={c.data.channels}; use 1 (grey) or 3 (RGB)")
        if int(c.data.image_size) < 4:
            raise ConfigError(f"data.image_size={c.data.image_size} is too small")
        if c.model.arch == "dcgan":
            image_base(int(c.data.image_size))
            if int(c.model.g_kernel) < 2:
                raise ConfigError("model.g_kernel must be at least 2")
        if c.data.name == "stacked_mnist" and int(c.data.channels) != 3:
            raise ConfigError("stacked_mnist has one digit per RGB channel: set data.channels=3")
        if c.data.name == "folder" and not c.data.path:
            raise ConfigError("data.name='folder' needs data.path=DIR (a folder of images)")
