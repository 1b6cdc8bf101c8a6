"""Every recipe error `jaxgan.config.validate` catches, and the CLI's handling of bad flags.

A bad recipe must cost a one-line error that names the fix, before anything is compiled or
written (issue 7); on the command line: exit code 2 and nothing in the workdir.
"""
import os
import subprocess

import ml_collections
import pytest

from jaxgan import config as config_lib
from jaxgan.config import ConfigError, base_config, validate

from conftest import REPO, apply_overrides, start_module  # noqa: E402


def recipe(**overrides):
    """A valid image recipe (digits at 16x16) with dotted-key overrides."""
    c = base_config()
    c.data.image_size = 16
    return apply_overrides(c, overrides)


def ring(**overrides):
    return recipe(**{"data.name": "ring", "model.arch": "mlp", "model.g_norm": "none",
                     "model.d_norm": "none", **overrides})


def with_extra_key(dotted: str):
    c = recipe()
    *path, last = dotted.split(".")
    node = c
    for p in path:
        node = node[p]
    with node.unlocked():
        node[last] = 1
    return c


def from_dict(**groups):
    """A recipe whose structure differs from the schema (what a hand-written dict can do)."""
    d = recipe().to_dict()
    for key, value in groups.items():
        d[key] = value
    return ml_collections.ConfigDict(d)


def test_the_shipped_recipes_and_the_tiny_test_recipes_are_valid():
    for name in sorted(os.listdir(os.path.join(REPO, "configs"))):
        if name.endswith(".py"):
            config = config_lib.load_recipe(os.path.join(REPO, "configs", name))
            if config.data.name == "folder":  # hw6_anime: the folder comes from the command line
                with pytest.raises(ConfigError, match="data.path"):
                    validate(config)
                config.data.path = "/some/dir"
            validate(config)
    validate(recipe())
    validate(ring())
    validate(recipe(**{"loss.name": "wgan-gp", "model.d_norm": "layer"}))
    validate(recipe(**{"loss.name": "wgan", "optim.d": config_lib.rmsprop(5e-5)}))
    validate(recipe(**{"data.image_size": 28}))  # doubles from 7x7
    validate(recipe(**{"model.arch": "mlp", "data.image_size": 24}))  # an MLP takes any size
    validate(recipe(**{"data.name": "stacked_mnist", "data.channels": 3}))
    validate(recipe(**{"data.name": "folder", "data.path": "/some/dir"}))
    validate(recipe(**{"train.dtype": "bfloat16"}))


# (recipe, pattern the message must match): each message names the key and the fix.
CASES = {
    "unknown top-level key": (with_extra_key("sed"), r"unknown config key 'sed'; did you mean 'seed'\?"),
    "unknown nested key": (with_extra_key("train.stpes"),
                           r"unknown config key 'train.stpes'; did you mean 'train.steps'\?"),
    "unknown key in an optimizer": (with_extra_key("optim.d.lrr"),
                                    r"'optim.d.lrr'; did you mean 'optim.d.lr'\?"),
    "unknown key without a near one": (with_extra_key("model.qqqqqqq"),
                                       r"^unknown config key 'model.qqqqqqq'$"),
    "group replaced by a value": (from_dict(model=3), r"'model' must be a group, got 3"),
    "nested group replaced by a value": (from_dict(optim={"g": 1, "d": recipe().optim.d.to_dict()}),
                                         r"'optim.g' must be a group"),
    "bad loss": (recipe(**{"loss.name": "wgangp"}), r"loss.name='wgangp'; choose one of gan, wgan, wgan-gp"),
    "bad generator loss": (recipe(**{"loss.generator": "ns"}), r"non_saturating' or 'minimax'"),
    "bad arch": (recipe(**{"model.arch": "resnet"}), r"model.arch='resnet'; choose one of mlp, dcgan"),
    "bad g norm": (recipe(**{"model.g_norm": "group"}), r"model.g_norm='group'; choose one of batch"),
    "bad d norm": (recipe(**{"model.d_norm": "spectral"}), r"model.d_norm='spectral'; choose one of"),
    "wgan-gp with a batch-norm critic": (
        recipe(**{"loss.name": "wgan-gp", "model.d_norm": "batch"}),
        r"critic uses batch norm.*gradient penalty; set model.d_norm='layer'"),
    "mlp with instance norm (critic)": (
        recipe(**{"model.arch": "mlp", "model.d_norm": "instance"}), r"instance norm needs feature maps"),
    "mlp with instance norm (generator)": (
        recipe(**{"model.arch": "mlp", "model.g_norm": "instance", "model.d_norm": "none"}),
        r"instance norm.*use 'batch', 'layer' or 'none' with mlp"),
    "n_critic 0": (recipe(**{"train.n_critic": 0}), r"train.n_critic=0; it must be at least 1"),
    "n_critic negative": (recipe(**{"train.n_critic": -5}), r"train.n_critic=-5"),
    "steps 0": (recipe(**{"train.steps": 0}), r"train.steps=0; it must be at least 1"),
    "batch_size 0": (recipe(**{"train.batch_size": 0}), r"train.batch_size=0; it must be at least 1"),
    "log_every 0": (recipe(**{"train.log_every": 0}), r"train.log_every=0"),
    "sample_every 0": (recipe(**{"train.sample_every": 0}), r"train.sample_every=0"),
    "checkpoint_every 0": (recipe(**{"train.checkpoint_every": 0}), r"train.checkpoint_every=0"),
    "keep_checkpoints 0": (recipe(**{"train.keep_checkpoints": 0}), r"train.keep_checkpoints=0"),
    "num_grid 0": (recipe(**{"train.num_grid": 0}), r"train.num_grid=0"),
    "steps_per_call 0": (recipe(**{"train.steps_per_call": 0}), r"train.steps_per_call=0"),
    "bad critic_loop": (recipe(**{"train.critic_loop": "fori"}),
                        r"train.critic_loop='fori'; use auto, scan or unrolled"),
    "bad train dtype": (recipe(**{"train.dtype": "float16"}),
                        r"train.dtype='float16'; use 'float32' or 'bfloat16'"),
    "train dtype as a short name": (recipe(**{"train.dtype": "bf16"}), r"train.dtype='bf16'"),
    "z_dim 0": (recipe(**{"model.z_dim": 0}), r"model.z_dim=0; it must be at least 1"),
    "bad optimizer name (g)": (recipe(**{"optim.g.name": "sgd"}), r"optim.g.name='sgd'; choose 'adam' or 'rmsprop'"),
    "bad optimizer name (d)": (recipe(**{"optim.d.name": "Adam"}), r"optim.d.name='Adam'"),
    "lr 0": (recipe(**{"optim.g.lr": 0.0}), r"optim.g.lr=0.0; it must be positive"),
    "lr negative": (recipe(**{"optim.d.lr": -1e-4}), r"optim.d.lr=-0.0001; it must be positive"),
    "lr nan": (recipe(**{"optim.d.lr": float("nan")}), r"optim.d.lr=nan"),
    "r1 negative": (recipe(**{"loss.r1_weight": -1.0}), r"loss.r1_weight=-1.0; the R1 weight must be >= 0"),
    "r1 with a batch-norm critic": (recipe(**{"loss.r1_weight": 10.0}),
                                    r"R1 penalty is per example.*set model.d_norm='layer'"),
    "unknown augmentation": (recipe(**{"train.augment": "color,flip"}),
                             r"train.augment has 'flip'; use a comma-separated subset of color, translation, cutout"),
    "augmenting 2D points": (recipe(**{"data.name": "ring", "model.arch": "mlp",
                                       "train.augment": "color"}), r"DiffAugment\) transforms images"),
    "negative num_classes": (recipe(**{"model.num_classes": -1}), r"model.num_classes=-1"),
    "bad g_cond": (recipe(**{"model.g_cond": "film"}), r"model.g_cond='film'; use 'embed' or 'cbn'"),
    "bad d_cond": (recipe(**{"model.d_cond": "acgan"}), r"model.d_cond='acgan'; use 'projection' or 'concat'"),
    "cbn without batch norm": (recipe(**{"model.num_classes": 10, "model.g_cond": "cbn",
                                         "model.g_norm": "layer"}),
                               r"g_cond='cbn' is conditional batch norm: it needs model.g_norm='batch'"),
    "conditional 2D points": (recipe(**{"data.name": "ring", "model.arch": "mlp",
                                        "model.num_classes": 8}),
                              r"num_classes needs a labelled image dataset; 'ring'"),
    "bad lr schedule": (recipe(**{"optim.schedule": "step"}),
                        r"optim.schedule='step'; choose one of constant, linear, cosine"),
    "negative decay steps": (recipe(**{"optim.decay_steps": -1}),
                             r"optim.decay_steps=-1; use 0 \(decay over train.steps\)"),
    "ema decay 1": (recipe(**{"train.ema_decay": 1.0}), r"train.ema_decay=1.0; use 0 \(off\)"),
    "ema decay negative": (recipe(**{"train.ema_decay": -0.5}), r"train.ema_decay=-0.5"),
    "wgan clip 0": (recipe(**{"loss.name": "wgan", "loss.clip": 0.0}),
                    r"loss.clip=0.0; wgan needs a positive clipping bound"),
    "wgan clip negative": (recipe(**{"loss.name": "wgan", "loss.clip": -0.01}), r"loss.clip=-0.01"),
    "ring with a conv model": (recipe(**{"data.name": "ring"}),
                               r"'ring' is 2D points; .*set model.arch='mlp'"),
    "grid with a conv model": (recipe(**{"data.name": "grid"}), r"'grid' is 2D points"),
    "2 channels": (recipe(**{"data.channels": 2}), r"data.channels=2; use 1 \(grey\) or 3 \(RGB\)"),
    "0 channels": (recipe(**{"data.channels": 0}), r"data.channels=0"),
    "image size 24 (DCGAN)": (recipe(**{"data.image_size": 24}),
                              r"image_size=24 cannot be built by doubling.*model.arch='mlp'"),
    "image size 100 (DCGAN)": (recipe(**{"data.image_size": 100}), r"image_size=100 cannot be built"),
    "image size 4 (DCGAN: nothing to double)": (recipe(**{"data.image_size": 4}),
                                                r"image_size=4 cannot be built"),
    "image size 3": (recipe(**{"data.image_size": 3, "model.arch": "mlp"}), r"image_size=3 is too small"),
    "g_kernel 1": (recipe(**{"model.g_kernel": 1}), r"model.g_kernel must be at least 2"),
    "folder without a path": (recipe(**{"data.name": "folder"}),
                              r"data.name='folder' needs data.path=DIR"),
    "stacked_mnist with 1 channel": (recipe(**{"data.name": "stacked_mnist"}),
                                     r"stacked_mnist .* set data.channels=3"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_validation_errors_are_one_line_config_errors_that_name_the_fix(name):
    config, pattern = CASES[name]
    with pytest.raises(ConfigError, match=pattern) as info:
        validate(config)
    assert "\n" not in str(info.value)


def test_image_base_is_the_resolution_the_dcgan_doubles_from():
    assert [config_lib.image_base(s) for s in (8, 16, 32, 64, 128, 14, 28, 56)] == [4] * 5 + [7] * 3
    for bad in (4, 7, 12, 24, 48, 100):
        with pytest.raises(ConfigError):
            config_lib.image_base(bad)


# Gaps: recipes that still pass validate (or fail with a bare TypeError) and crash later.
GAPS = {
    "an int key set to None": (recipe(**{"train.steps": None}), r"train.steps"),
    "a value replaced by a group": (
        from_dict(train={**recipe().train.to_dict(), "steps": {"a": 1}}), r"train.steps"),
    "mlp hidden widths that are not positive ints": (
        recipe(**{"model.arch": "mlp", "model.hidden": ("abc",)}), r"model.hidden"),
    "mlp hidden width 0": (recipe(**{"model.arch": "mlp", "model.hidden": (0,)}), r"model.hidden"),
    "negative gradient-penalty weight": (
        recipe(**{"loss.name": "wgan-gp", "model.d_norm": "layer", "loss.gp_weight": -1.0}),
        r"loss.gp_weight"),
}


@pytest.mark.parametrize("name", list(GAPS))
def test_validation_gaps(name):
    config, pattern = GAPS[name]
    with pytest.raises(ConfigError, match=pattern):
        validate(config)


# ------------------------------------------------------------------------------- the CLI

CLI_CASES = {
    "unknown override key": ["--config.model.nope=1"],
    "unknown override key with a near one": ["--config.train.stepz=3"],
    "missing recipe file": ["--config", "missing.py"],
    "wrong type through an override": ["--config.train.steps=abc"],
    "a value for a group": ["--config.model=3"],
    "bad value through an override": ["--config.loss.name=wgangp"],
}


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Runs every CLI case at once (each pays ~3 s of imports); {name: (rc, stderr, workdir)}."""
    root = tmp_path_factory.mktemp("cli")
    procs = {}
    for i, (name, args) in enumerate(CLI_CASES.items()):
        work = str(root / f"w{i}")
        # --config.train.steps=1 keeps a run short should a bad flag ever be accepted.
        extra = [] if "steps" in " ".join(args) or "--config" in args else ["--config.train.steps=1"]
        procs[name] = work, start_module(
            "jaxgan.train", "--workdir", work, "--noprogress", *args, *extra,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = {}
    for name, (work, p) in procs.items():
        try:
            _, err = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        out[name] = p.returncode, err, work
    return out


def _one_line_exit_2(cli, name, *needles):
    rc, err, work = cli[name]
    lines = err.strip().splitlines()
    assert not os.path.exists(work), f"{name}: wrote {work}"
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), f"rc={rc}\n{err}"
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cli_bad_value_is_one_line_exit_2(cli):
    _one_line_exit_2(cli, "bad value through an override", "loss.name='wgangp'", "wgan-gp")



def test_cli_unknown_override_key_is_one_line_exit_2(cli):
    _one_line_exit_2(cli, "unknown override key", "model.nope")


def test_cli_unknown_override_key_suggests_the_nearest(cli):
    _one_line_exit_2(cli, "unknown override key with a near one", "train.stepz", "train.steps")


def test_cli_missing_recipe_file_is_one_line_exit_2(cli):
    _one_line_exit_2(cli, "missing recipe file", "missing.py")


def test_cli_wrong_type_is_one_line_exit_2(cli):
    _one_line_exit_2(cli, "wrong type through an override", "train.steps", "abc")


def test_cli_value_for_a_group_is_one_line_exit_2(cli):
    _one_line_exit_2(cli, "a value for a group", "model")


def test_cli_bad_flags_today_fail_early_without_writing(cli):
    """What holds already: every bad flag fails before any work, nonzero, nothing written."""
    for name, (rc, err, work) in cli.items():
        assert rc != 0, name
        assert not os.path.exists(work), name
    assert "invalid literal for int()" in cli["wrong type through an override"][1]
    assert "missing.py" in cli["missing recipe file"][1]


def test_load_recipe_reads_a_recipe_file_and_rejects_other_files(tmp_path):
    recipe_file = tmp_path / "mine.py"
    recipe_file.write_text("from jaxgan.config import base_config\n"
                           "def get_config():\n    c = base_config()\n    c.train.steps = 7\n"
                           "    return c\n")
    assert config_lib.load_recipe(recipe_file).train.steps == 7
    (tmp_path / "notes.txt").write_text("steps = 7")
    with pytest.raises(ConfigError, match="not a Python recipe file"):
        config_lib.load_recipe(tmp_path / "notes.txt")
