"""Mode collapse, measured: each loss and remedy on ring, grid and stacked MNIST, several seeds.

    python scripts/mode_collapse_study.py --datasets ring,grid --seeds 3 --steps 2000 \
        --variants gan,wgan-gp,hinge-r1,gan-ema --out study.md
    python scripts/mode_collapse_study.py --datasets stacked_mnist --seeds 1 --steps 3000 \
        --variants gan --data_dir ../shared/tensorflow_datasets --classifier /tmp/mnist_classifier

Every run is a real `jaxgan.train` run in a temporary workdir (CPU-sized: MLPs for 2D mixtures,
the DCGAN recipe for stacked MNIST), scored like the papers score it: 2500 samples for mixtures
(modes with >= 20 high-quality samples, high-quality = within 3 sigma of the nearest mode,
reverse KL of the mode histogram), 26,000 for stacked MNIST (modes hit by a digit classifier on
each channel, KL to uniform). The table gives mean +- std over seeds beside the published rows.
`--list` shows the variants; a variant is a named set of config overrides (add your own with
`--extra NAME=key=value;key=value`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from jaxgan import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Recipes each dataset starts from; variants change only what they are about.
BASE = {"ring": "ring_gan.py", "grid": "ring_gan.py", "stacked_mnist": "stacked_mnist.py"}

VARIANTS: dict[str, dict] = {
    "gan": {},
    "gan-minimax": {"loss.generator": "minimax"},
    "wgan-gp": {"loss.name": "wgan-gp", "train.n_critic": 5, "optim.g.b2": 0.9, "optim.d.b2": 0.9},
    "wgan-gp-toy": {"loss.name": "wgan-gp", "loss.gp_weight": 0.1, "train.n_critic": 5,
                    "optim.g.b2": 0.9, "optim.d.b2": 0.9},
    "hinge-r1": {"loss.name": "hinge", "loss.r1_weight": 1.0},
    "gan-r1": {"loss.r1_weight": 1.0},
    "gan-ema": {"train.ema_decay": 0.999},
    "gan-ttur": {"optim.d.lr": 4e-4, "optim.g.lr": 1e-4},
    "gan-linear-decay": {"optim.schedule": "linear"},
    "gan-sn": {"model.d_spectral_norm": True},
    "gan-mbstd": {"model.d_mbstd": 4},
    "pacgan2": {"model.pack": 2},
    "pacgan4": {"model.pack": 4},
    "gan-noise": {"model.g_noise": True},
    "gan-old-critic": {"train.old_critic_every": 5},
    "gan-replay": {"train.replay_size": 4096},
    # configs/ring_wgan_gp.py: lambda 0.1, Adam 1e-3 (b2 0.9) decayed linearly, G EMA
    "best": {"loss.name": "wgan-gp", "loss.gp_weight": 0.1, "train.n_critic": 5,
             "optim.g": {"lr": 1e-3, "b2": 0.9}, "optim.d": {"lr": 1e-3, "b2": 0.9},
             "optim.schedule": "linear", "train.ema_decay": 0.999},
}
# best + a categorical latent code (model.z_categories): G may jump between disjoint modes
# instead of leaving a trail of samples between them; z gains a coordinate for the category.
VARIANTS["best-cat50"] = {**VARIANTS["best"], "model.z_dim": 3, "model.z_categories": 50}
VARIANTS["best-cat64"] = {**VARIANTS["best"], "model.z_dim": 3, "model.z_categories": 64}

# Published rows (as quoted in the project's issue 6): (dataset, method, modes, high quality %).
PUBLISHED = [
    ("ring", "PacGAN2 (Lin et al. 2018, Table 1)", "7.9 / 8", "95.6"),
    ("grid", "PacGAN4 (Lin et al. 2018, Table 1)", "24.8 / 25", "93.6"),
    ("stacked_mnist", "PacDCGAN (Lin et al. 2018)", "1000 / 1000", "-"),
]


def load_recipe(dataset: str):
    config = config_lib.load_recipe(os.path.join(REPO, "configs", BASE[dataset]))
    config.data.name = dataset
    return config


def set_key(config, dotted: str, value) -> None:
    """config[dotted] = value; a dict value sets several keys of that group."""
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
        node = node[p]
    if isinstance(value, dict):
        for k, v in value.items():
            node[leaf][k] = v
    else:
        node[leaf] = value


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run_one(dataset: str, variant: dict, seed: int, steps: int, args) -> dict:
    from jaxgan import evaluate as evaluate_lib
    from jaxgan import sample as sample_lib
    from jaxgan import train as train_lib

    config = load_recipe(dataset)
    config.seed = seed
    config.train.steps = steps
    config.train.log_every = max(1, steps // 10)
    config.train.sample_every = steps
    config.train.checkpoint_every = steps
    if dataset in ("ring", "grid"):
        config.train.steps_per_call = 50
    if args.data_dir:
        config.data.data_dir = args.data_dir
    for k, v in variant.items():
        set_key(config, k, v)
    workdir = tempfile.mkdtemp(prefix=f"jaxgan-study-{dataset}-")
    t0 = time.perf_counter()
    try:
        train_lib.train_and_evaluate(config, workdir, progress=False, log=lambda s: None)
        num = 2500 if dataset in ("ring", "grid") else 26_000
        _, samples = sample_lib.generate(workdir, num, seed=seed)
        kwargs = {"classifier": args.classifier} if dataset == "stacked_mnist" else {}
        res = evaluate_lib.evaluate(config, samples, "modes", **kwargs)
    except train_lib.DivergenceError as e:
        res = {"diverged": str(e)}
    finally:
        if args.keep:
            print(f"  kept {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    res["seconds"] = time.perf_counter() - t0
    return res


def summarize(rows: list[dict]) -> tuple[str, str, str, str, int]:
    ok = [r for r in rows if "diverged" not in r]
    if not ok:
        return "diverged", "-", "-", "-", 0

    def ms(key, scale=1.0, fmt="{:.1f}"):
        vals = np.array([float(r[key]) * scale for r in ok])
        return f"{fmt.format(vals.mean())} +- {fmt.format(vals.std())}"

    num = int(ok[0]["modes/num_modes"]) if "modes/num_modes" in ok[0] else 1000
    covered = "modes/captured" if "modes/captured" in ok[0] else "modes/covered"  # stacked
    modes = f"{ms(covered)} / {num}"
    hq = ms("modes/high_quality", 100.0) if "modes/high_quality" in ok[0] else "-"
    kl_key = "modes/reverse_kl" if "modes/reverse_kl" in ok[0] else "modes/kl"
    kl = ms(kl_key, fmt="{:.2f}") if kl_key in ok[0] else "-"
    spread = ms("modes/spread", fmt="{:.2f}") if "modes/spread" in ok[0] else "-"
    return modes, hq, kl, spread, len(rows) - len(ok)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="ring,grid")
    ap.add_argument("--variants", default="gan,wgan-gp,hinge-r1,gan-ema")
    ap.add_argument("--extra", action="append", default=[],
                    help="NAME=key=value;key=value: a variant of your own")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first_seed", type=int, default=0,
                    help="seeds are first_seed .. first_seed + seeds - 1 (add seeds to a table)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--data_dir", default="", help="TFDS data_dir for stacked_mnist")
    ap.add_argument("--classifier", default="", help="MNIST classifier for stacked_mnist")
    ap.add_argument("--out", default="", help="append the markdown table to this file")
    ap.add_argument("--keep", action="store_true", help="keep the workdirs")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)

    variants = dict(VARIANTS)
    for spec in args.extra:
        name, _, body = spec.partition("=")
        pairs = [p.split("=", 1) for p in body.split(";") if p]
        variants[name] = {k: parse_value(v) for k, v in pairs}
    if args.list:
        for name, v in variants.items():
            print(f"{name:18s} {v}")
        return 0
    datasets = [d for d in args.datasets.split(",") if d]
    names = [v for v in args.variants.split(",") if v]
    for d in datasets:
        if d not in BASE:
            ap.error(f"unknown dataset {d!r}; choose from {', '.join(BASE)}")
        if d == "stacked_mnist" and not args.classifier:
            ap.error("stacked_mnist needs --classifier (python -m jaxgan.evaluate train-classifier)")
    for n in names:
        if n not in variants:
            ap.error(f"unknown variant {n!r}; --list shows them")

    lines = [f"Command: `python scripts/mode_collapse_study.py {' '.join(argv or sys.argv[1:])}`",
             "", "| dataset | variant | modes | high quality % | reverse KL | spread (sigmas) "
             "| diverged | s/run |", "|---|---|---|---|---|---|---|---|"]
    for d in datasets:
        for n in names:
            rows = []
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                r = run_one(d, variants[n], seed, args.steps, args)
                print(f"{d} {n} seed {seed}: "
                      + json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                    for k, v in r.items()}), flush=True)
                rows.append(r)
            modes, hq, kl, spread, bad = summarize(rows)
            secs = np.mean([r["seconds"] for r in rows])
            lines.append(f"| {d} | {n} | {modes} | {hq} | {kl} | {spread} | {bad}/{len(rows)} "
                         f"| {secs:.0f} |")
        for pd, method, modes, hq in PUBLISHED:
            if pd == d:
                lines.append(f"| {d} | published: {method} | {modes} | {hq} | | | | |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(table + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
