"""`python -m jaxgan.train --config configs/NAME.py --workdir DIR [--config.a.b=v ...]`

The only module (with sample/evaluate) that touches files, flags and signals. The library entry
point is `train_and_evaluate(config, workdir)`, which the tests call too.
"""
from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxgan import checkpoint as ckpt_lib
from jaxgan import compile_cache, host_memory
from jaxgan import config as config_lib
from jaxgan import data as data_lib
from jaxgan import distributed
from jaxgan import images as images_lib
from jaxgan import layers
from jaxgan import models
from jaxgan import optim
from jaxgan import plots
from jaxgan import sample as sample_lib
from jaxgan import state as state_lib
from jaxgan import step as step_lib

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "default.py")

# Keys that fix the shapes of the saved state: a workdir cannot continue under other values.
STRUCTURAL_KEYS = ("data.name", "data.split", "data.image_size", "data.channels", "data.limit",
                   "data.path", "data.num_examples", "model", "loss.name", "optim.g.name",
                   "optim.d.name")


class DivergenceError(RuntimeError):
    """A non-finite loss or parameter; the last good checkpoint is kept."""


class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop saves a checkpoint at the next step boundary."""

    def __init__(self):
        self.signum = None

    def __call__(self, signum, frame):
        del frame
        if self.signum is not None:  # a second Ctrl-C while saving: let the user insist
            raise KeyboardInterrupt
        self.signum = signum


@contextlib.contextmanager
def _stop_on_signals():
    flag = _StopFlag()
    if sys.modules["threading"].current_thread() is not sys.modules["threading"].main_thread():
        yield flag
        return
    old = {s: signal.signal(s, flag) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _lookup(config, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value.to_dict() if hasattr(value, "to_dict") else value


# Switches that add parts to the state (averages, a critic snapshot, a fake buffer): a workdir
# continues only with each one on or off as it was trained.
STATE_SWITCHES = (("train.ema_decay", "a generator EMA"), ("train.d_ema_decay", "a critic EMA"),
                  ("train.old_critic_every", "an old-critic snapshot"),
                  ("train.replay_size", "a replay buffer of old fakes"))


def _with_defaults(saved: dict, default=None) -> dict:
    """The saved recipe with keys added since it was written set to their defaults."""
    default = config_lib.base_config().to_dict() if default is None else default
    out = dict(default)
    for k, v in saved.items():
        out[k] = _with_defaults(v, default[k]) if isinstance(v, dict) and isinstance(
            default.get(k), dict) else v
    return out


def check_compatible(saved, config, workdir: str) -> None:
    """A workdir continues only under a recipe with the same shapes of state."""
    saved = _with_defaults(saved.to_dict() if hasattr(saved, "to_dict") else dict(saved))
    for key in STRUCTURAL_KEYS:
        try:
            old = _lookup(saved, key)
        except KeyError:
            old = None
        new = _lookup(config, key)
        old, new = json.loads(json.dumps(old)), json.loads(json.dumps(new))  # tuples == lists
        if old != new:
            raise config_lib.ConfigError(
                f"workdir {workdir!r} holds checkpoints of another recipe ({key}: {old!r} there, "
                f"{new!r} now); use a new --workdir or the recipe it was trained with")
    for key, what in STATE_SWITCHES:
        had, has = _lookup(saved, key), _lookup(config, key)
        if (float(had) > 0) != (float(has) > 0) or (key == "train.replay_size" and had != has):
            raise config_lib.ConfigError(
                f"workdir {workdir!r} was trained {'with' if float(had) > 0 else 'without'} "
                f"{what} ({key}={had}); keep {key}={had} or use a new --workdir")


def check_labels(config, dataset) -> None:
    """A conditional recipe needs labels in range, resident on the device (not streamed)."""
    k = models.num_classes(config)
    name = config.data.name
    if config.loss.name == "ssgan":
        if dataset.labels is None:
            raise config_lib.ConfigError(f"loss.name='ssgan' needs labelled data; {name!r} has no "
                                         "labels")
        if not data_lib.fits_device(dataset, config):
            raise config_lib.ConfigError(f"ssgan keeps the images on the device, but {name!r} "
                                         f"needs {dataset.nbytes / 2**20:.0f} MiB; raise "
                                         "data.device_budget_mb")
    if not k:
        return
    if dataset.labels is None:
        raise config_lib.ConfigError(f"model.num_classes={k} but {name!r} has no labels; train "
                                     "it unconditionally (model.num_classes=0)")
    top = int(np.max(dataset.labels))
    if top >= k:
        raise config_lib.ConfigError(f"{name!r} has labels up to {top}; set "
                                     f"model.num_classes={top + 1}")
    if not data_lib.fits_device(dataset, config):
        raise config_lib.ConfigError(
            f"conditional training keeps images and labels on the device, but {name!r} needs "
            f"{dataset.nbytes / 2**20:.0f} MiB; raise data.device_budget_mb")


def _sharding():
    """(mesh-wide replicated sharding, batch sharding or None) over all devices: `jax.devices()`
    lists every process's devices in a multi-host run, so the mesh spans the hosts."""
    devices = jax.devices()
    if len(devices) == 1:
        return None, None
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    P = jax.sharding.PartitionSpec
    return (jax.sharding.NamedSharding(mesh, P()), jax.sharding.NamedSharding(mesh, P("data")))


def _data_sharding(dataset, replicated, batch_sharding):
    """Resident images are split over the devices (each holds N/devices) when N divides evenly;
    XLA turns the in-step gather into a collective. Otherwise (and for mixtures) replicated."""
    if batch_sharding is None or dataset.is_mixture:
        return replicated
    if dataset.num_examples % len(batch_sharding.mesh.devices.flat):
        return replicated
    return batch_sharding


def _steps_per_call(config) -> int:
    every = [int(config.train[k]) for k in ("log_every", "sample_every", "checkpoint_every")]
    return max(1, min(int(config.train.steps_per_call), *every))


class _Logs:
    """metrics.jsonl (always) and TensorBoard event files (when tensorboardX imports); on the
    main process only (`write=False` on the others of a multi-host run)."""

    def __init__(self, workdir: str, write: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.write = write
        self.tb = None
        if not write:
            return
        try:
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except Exception:  # logging must never stop training
            self.tb = None

    def scalars(self, step: int, metrics: dict) -> None:
        if not self.write:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        if self.tb is not None:
            self.tb.add_image(name, image, step, dataformats="HWC")

    def close(self):
        if self.tb is not None:
            self.tb.close()


def _save_samples(workdir: str, step: int, sampler, state, z, dataset, logs,
                  labels=None) -> str | None:
    # every process samples (a global computation); the main process writes
    out = np.asarray(jax.device_get(sampler(*state_lib.sampling_generator(state), z, labels)))
    if not logs.write:
        return None
    if dataset.is_mixture:
        path = os.path.join(workdir, "samples", f"step_{step:07d}.png")
        images_lib.scatter_png(path, np.asarray(out), dataset.centers)
        return path
    per_row = None if labels is None else int(np.sum(np.asarray(labels) == 0))  # a row per class
    grid = images_lib.make_grid(images_lib.to_uint8(out), nrow=per_row)
    path = os.path.join(workdir, "samples", f"step_{step:07d}.png")
    images_lib.save_png(path, grid)
    logs.image(step, "samples", grid)
    return path


def train_and_evaluate(config, workdir: str, progress: bool = True, log=print):
    """Trains (or resumes) the recipe in `workdir`; returns (final state, last metrics).

    Raises ConfigError / DataError / CheckpointError before anything is compiled or written when
    the recipe, data or workdir cannot work, and DivergenceError on a non-finite loss.
    """
    config_lib.validate(config)
    mngr = None
    if os.path.isdir(ckpt_lib.checkpoint_dir(workdir)):
        mngr = ckpt_lib.manager(workdir, keep=int(config.train.keep_checkpoints))
        if mngr.latest_step() is not None:
            saved, _ = ckpt_lib.load_config(workdir)
            check_compatible(saved, config, workdir)
    dataset = data_lib.load(config)
    check_labels(config, dataset)
    main = distributed.is_main_process()  # multi-host: the one process that writes files
    if not main:
        progress, log = False, (lambda *a, **k: None)
    replicated, batch_sharding = _sharding()
    if batch_sharding is not None and config.train.batch_size % jax.device_count():
        raise config_lib.ConfigError(
            f"train.batch_size={config.train.batch_size} does not split over "
            f"{jax.device_count()} devices; use a multiple of {jax.device_count()}")

    os.makedirs(workdir, exist_ok=True)
    mngr = mngr or ckpt_lib.manager(workdir, keep=int(config.train.keep_checkpoints))
    if main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=2, default=str)

    generator, critic = models.build(config)
    g_tx, d_tx = optim.make(config)

    def create():
        state = state_lib.create(int(config.seed), generator, critic, g_tx, d_tx,
                                 int(config.model.z_dim), models.data_shape(config),
                                 dataset.num_examples, ema=float(config.train.ema_decay) > 0,
                                 d_ema=float(config.train.d_ema_decay) > 0,
                                 old_critic=int(config.train.old_critic_every) > 0,
                                 replay_size=int(config.train.replay_size))
        if config.loss.name == "ssgan":  # weight norm initialised from data, as the paper does
            from jaxgan import ssgan
            state = ssgan.init_state(state, critic, dataset.images[:500])
        return state

    # Replicated as it is created: every process computes the same state from the seed, so no
    # host array is ever put onto a sharding that spans processes. Orbax restores onto the
    # shardings of the state it is given (all processes restore together).
    state = create() if replicated is None else jax.jit(create, out_shardings=replicated)()
    if mngr.latest_step() is not None:
        state = ckpt_lib.restore_state(mngr, state)
        log(f"resumed from step {int(state.step)} in {workdir}")
    if dataset.skipped:
        log(f"skipped {dataset.skipped} unreadable image files")
    stream = None
    num_classes = models.num_classes(config)
    if dataset.is_mixture or data_lib.fits_device(dataset, config):
        device_data = data_lib.device_data(dataset, _data_sharding(dataset, replicated,
                                                                   batch_sharding),
                                           labels=bool(num_classes))
        if config.loss.name == "ssgan":  # the few labelled examples, apart
            from jaxgan import ssgan
            device_data.update(ssgan.labelled_data(dataset, config, replicated))
    else:  # too big for the device budget: a background thread feeds uint8 batches
        P = jax.sharding.PartitionSpec
        stream = data_lib.Prefetcher(
            dataset.images, jax.random.fold_in(state.key, state_lib.STREAM_DATA),
            int(config.train.batch_size), int(config.train.n_critic),
            epoch=int(state.data.epoch), cursor=int(state.data.cursor),
            sharding=None if batch_sharding is None else jax.sharding.NamedSharding(
                batch_sharding.mesh, P(None, "data")))
        log(f"streaming {dataset.nbytes / 2**20:.0f} MiB of images "
            f"(over data.device_budget_mb={config.data.device_budget_mb})")

    train_step = step_lib.make_train_step(generator, critic, g_tx, d_tx, config, batch_sharding)
    per_call = 1 if stream is not None else _steps_per_call(config)
    compiled = {}
    step_options = layers.step_compiler_options(jax.default_backend())

    def run(state, k):
        if k not in compiled:
            compiled[k] = jax.jit(step_lib.repeat_step(train_step, k), donate_argnums=0,
                                  compiler_options=step_options)
        return compiled[k](state, {"real": next(stream)} if stream is not None else device_data)

    sampler = step_lib.jit_sampler(generator)
    grid_labels = None
    categories = int(config.model.z_categories)
    if not 0 < categories <= int(config.train.num_grid) // 4 or dataset.is_mixture:
        categories = 0  # too many for rows of 4+, or points: a plain grid
    rows = num_classes or categories
    if rows:  # one row per class (or category of the code), the same noise in every row
        per_row = max(1, int(config.train.num_grid) // rows)
        grid_labels = np.repeat(np.arange(rows, dtype=np.int32), per_row)
        grid_z = jnp.tile(state_lib.grid_noise(state.key, per_row, int(config.model.z_dim)),
                          (rows, 1))
        if not num_classes:  # an unconditional G's category is part of its z (InfoGAN)
            grid_z = jnp.asarray(sample_lib.with_category(np.asarray(grid_z), grid_labels, rows))
    else:
        grid_z = state_lib.grid_noise(state.key, int(config.train.num_grid),
                                      int(config.model.z_dim))
    if dataset.is_mixture:
        grid_z = jax.random.normal(jax.random.fold_in(state.key, state_lib.STREAM_GRID),
                                   (2500, int(config.model.z_dim)))
    logs = _Logs(workdir, write=main)
    periodic_eval = _PeriodicEval(config, workdir, dataset, sampler, state.key, log)
    test_accuracy = _TestAccuracy(config, critic, log) if config.loss.name == "ssgan" else None
    total = int(config.train.steps)
    t = config.train
    step = int(jax.device_get(state.step))
    images_per_step = int(t.batch_size) * int(t.n_critic)
    metrics_host: dict = {}

    def crossed(prev: int, now: int, every: int) -> bool:
        return now // every > prev // every or now == total

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=step, desc="train", unit="step", dynamic_ncols=True,
                   file=sys.stderr)
    last_time, last_step = time.perf_counter(), step
    try:
        with _stop_on_signals() as stop:
            while step < total:
                k = min(per_call, total - step)
                prev = step
                state, metrics = run(state, k)
                step += k
                if bar is not None:
                    bar.update(k)
                if crossed(prev, step, int(t.log_every)):
                    metrics_host = {key: float(v) for key, v in jax.device_get(metrics).items()}
                    _check_finite(metrics_host, step, mngr.latest_step() is not None)
                    now = time.perf_counter()
                    rate = (step - last_step) / max(now - last_time, 1e-9)
                    last_time, last_step = now, step
                    metrics_host["train/steps_per_sec"] = rate
                    metrics_host["train/images_per_sec"] = rate * images_per_step
                    logs.scalars(step, metrics_host)
                    if bar is not None:
                        bar.set_postfix({"d": f"{metrics_host['d/loss']:.3f}",
                                         "g": f"{metrics_host['g/loss']:.3f}",
                                         "img/s": f"{metrics_host['train/images_per_sec']:.0f}"})
                if crossed(prev, step, int(t.sample_every)):
                    _save_samples(workdir, step, sampler, state, grid_z, dataset, logs,
                                  grid_labels)
                    if main:
                        plots.plot_losses(logs.path, os.path.join(workdir, "losses.png"))
                    if test_accuracy is not None:
                        logs.scalars(step, test_accuracy(state, step))
                if periodic_eval.due(prev, step, total):
                    logs.scalars(step, periodic_eval(state, step, config))
                stopping = stop.signum is not None
                if jax.process_count() > 1:  # all processes stop at the same step: they agree
                    stopping = (crossed(prev, step, int(t.log_every))  # at log steps (a collective)
                                and distributed.any_process(stopping))
                if crossed(prev, step, int(t.checkpoint_every)) or stopping:
                    _check_state_finite(state, step)
                    ckpt_lib.save(mngr, state, config)
                if stopping:
                    mngr.wait_until_finished()
                    name = (signal.Signals(stop.signum).name if stop.signum is not None
                            else "a signal to another process")
                    log(f"{name}: saved a checkpoint at step {step}; resume with the same "
                        f"command (python -m jaxgan.train ... --workdir {workdir})")
                    return state, metrics_host
    finally:
        if bar is not None:
            bar.close()
        if stream is not None:
            stream.close()
        mngr.wait_until_finished()
        ckpt_lib.empty_trash(mngr)
        logs.close()
        if main:
            plots.plot_losses(logs.path, os.path.join(workdir, "losses.png"))  # never raises
    return state, metrics_host


class _TestAccuracy:
    """Semi-supervised runs: the critic's accuracy on the test split, at every sample grid."""

    def __init__(self, config, critic, log):
        from jaxgan import ssgan
        self.lib, self.log = ssgan, log
        self.images, self.labels = ssgan.test_split(config)
        self.predict = ssgan.make_classifier(critic)

    def __call__(self, state, step: int) -> dict:
        acc = self.lib.accuracy(self.predict, *self.lib.classifier_variables(state), self.images,
                                self.labels)
        self.log(f"step {step}: test accuracy {100 * acc:.2f}% ({len(self.labels)} images)")
        return {"ssgan/test_accuracy": acc}


class _PeriodicEval:
    """Scores fixed-noise samples every eval.every steps; keeps the best state in WORKDIR/best
    (itself a workdir: `jaxgan.sample --workdir WORKDIR/best`). Multi-host: every process
    samples and scores (the same numbers), all save the best checkpoint, the main one writes."""

    def __init__(self, config, workdir, dataset, sampler, key, log):
        self.every = int(config.eval.every)
        if not self.every:
            return
        from jaxgan import evaluate as evaluate_lib
        self.lib = evaluate_lib
        self.evaluator = evaluate_lib.Evaluator(
            config, config.eval.metrics or None, classifier=config.eval.classifier or None,
            inception=config.eval.inception or None,
            real_images=None if dataset.is_mixture else dataset.images, log=log)
        self.config, self.sampler, self.dataset = config, sampler, dataset
        self.key = jax.random.fold_in(key, state_lib.STREAM_EVAL)
        self.metric = config.eval.best_metric
        self.best_dir = os.path.join(workdir, "best")
        self.best_file = os.path.join(self.best_dir, "best.json")
        self.best = None
        if self.metric and os.path.exists(self.best_file):
            with open(self.best_file) as f:
                self.best = json.load(f).get("value")

    def due(self, prev: int, step: int, total: int) -> bool:
        return bool(self.every) and (step // self.every > prev // self.every or step == total)

    def __call__(self, state, step: int, config) -> dict:
        k, num = models.num_classes(config), int(config.eval.num)
        res = self.evaluator(self.lib.sample_batches(
            self.sampler, *state_lib.sampling_generator(state), self.key, num,
            int(config.model.z_dim), mixture=self.dataset.is_mixture, num_classes=k),
            labels=self.lib.balanced_labels(num, k))
        res = {f"eval/{k}": float(v) for k, v in res.items()}
        if self.metric:
            value = res[f"eval/{self.metric}"]
            if self.lib.is_better(self.metric, value, self.best):
                self.best = value
                mngr = ckpt_lib.manager(self.best_dir, keep=1)  # every process saves its part
                ckpt_lib.save(mngr, state, config)
                mngr.wait_until_finished()
                if distributed.is_main_process():
                    images_lib.atomic_write(self.best_file, lambda f: f.write(json.dumps(
                        {"metric": self.metric, "value": value, "step": step}).encode()))
        return res


def _check_finite(metrics: dict, step: int, has_checkpoint: bool) -> None:
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:
        kept = ("the last good checkpoint is kept" if has_checkpoint
                else "no checkpoint was written yet")
        raise DivergenceError(
            f"non-finite {', '.join(bad)} at step {step}; {kept}. "
            "Lower the learning rates or try loss.name='wgan-gp'")


@jax.jit
def _all_finite(tree) -> jax.Array:
    """One compiled reduction over every leaf (not one tiny program per parameter array)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _check_state_finite(state, step: int) -> None:
    if not bool(jax.device_get(_all_finite((state.g_params, state.d_params, state.ema)))):
        raise DivergenceError(
            f"non-finite parameters at step {step}; not saving over the last good checkpoint. "
            "Lower the learning rates or try loss.name='wgan-gp'")


def _flag_error(e: BaseException, argv) -> str:
    """One line for what absl / ml_collections raise on a bad --config or --config.* flag."""
    if isinstance(e, (AttributeError, KeyError)):  # an override names no key of the recipe
        names = [a.split("=")[0][2:] for a in argv[1:] if a.startswith("--config.")]
        recipe = config_lib.base_config()
        for name in names:
            node, path = recipe, name.split(".")[1:]
            for i, part in enumerate(path):
                if not hasattr(node, "keys") or part not in node:
                    keys = list(node.keys()) if hasattr(node, "keys") else []
                    near = difflib.get_close_matches(part, keys, n=1)
                    hint = (f"; did you mean --config.{'.'.join(path[:i] + [near[0]])}?"
                            if near else "")
                    return f"unknown config key '{'.'.join(path)}' in --{name}{hint}"
                node = node[part]
    if isinstance(e, OSError):  # "Failed loading config file ...\n ... [Errno 2] ..."
        path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
        path = path or next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"),
                            "?")
        return f"cannot load the recipe --config {path}: {str(e).strip().splitlines()[-1].strip()}"
    return " ".join(str(e).split())


def main(argv=None) -> int:
    from absl import app, flags, logging
    from ml_collections import config_flags

    argv = list(sys.argv if argv is None else argv)
    try:  # multi-host: JAXGAN_COORDINATOR etc. (README "Multi-host"); before any device is used
        distributed.initialize_from_env()
    except distributed.DistributedError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    host_memory.keep_freed_memory()  # before the first computation; XLA:CPU reuses its scratch

    def fail(e):
        print(f"error: {_flag_error(e, argv)}", file=sys.stderr)
        sys.exit(2)

    try:  # config_flags resolves --config.* overrides here: an unknown key raises now
        config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Recipe file (configs/*.py).",
                                        lock_config=True, sys_argv=argv)
    except Exception as e:
        fail(e)
    flags.DEFINE_string("workdir", "runs/default", "Where checkpoints, samples and logs go.")
    flags.DEFINE_bool("progress", True, "Show a tqdm progress bar.")

    def parse(args):
        try:
            rest = flags.FLAGS(args)
            flags.FLAGS.config.keys()  # a recipe that failed to load raises here, not mid-run
            return rest
        except Exception as e:  # flags.Error (bad value or type), OSError (missing file), ...
            fail(e)

    def _main(rest):
        if len(rest) > 1:
            print(f"error: unexpected arguments: {' '.join(rest[1:])}", file=sys.stderr)
            sys.exit(2)
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
        compile_cache.enable()  # a restart loads the compiled programs from disk
        f = flags.FLAGS
        try:
            state, _ = train_and_evaluate(f.config, f.workdir, progress=f.progress)
        except (config_lib.ConfigError, data_lib.DataError, ckpt_lib.CheckpointError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except DivergenceError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(3)
        if int(state.step) >= int(f.config.train.steps) and distributed.is_main_process():
            print(f"done: samples in {os.path.join(f.workdir, 'samples')}, checkpoints in "
                  f"{ckpt_lib.checkpoint_dir(f.workdir)}, curves in "
                  f"{os.path.join(f.workdir, 'losses.png')}")

    app.run(_main, argv=argv, flags_parser=parse)
    return 0


if __name__ == "__main__":
    main()
