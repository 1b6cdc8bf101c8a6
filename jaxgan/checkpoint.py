"""Orbax checkpoints of a run: the whole GANState, the generator alone, and the recipe.

The generator (and a semi-supervised run's critic) is saved as its own item so `jaxgan.sample`
and `jaxgan.evaluate` restore a few megabytes instead of both optimizers and the critic. Orbax
writes each step to a temporary directory and renames it when complete, so a crash mid-save
leaves the previous step restorable.
"""
from __future__ import annotations

import dataclasses
import os
import shutil

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxgan.state import GANState, sampling_generator

CHECKPOINT_DIR = "checkpoints"
# Old steps are renamed into this subdirectory before they are deleted: a kill -9 in the middle
# of a deletion then never leaves a half-deleted step that looks like a checkpoint.
TRASH_DIR = "deleted"


# GANState fields added after checkpoints were first written; an older checkpoint lacks them.
ADDED_FIELDS = ("d_ema", "history")


class CheckpointError(ValueError):
    """No usable checkpoint where one was expected; the message says what to do."""


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def manager(workdir: str, keep: int = 3, create: bool = True) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        create=create,
        preservation_policy=ocp.checkpoint_managers.LatestN(keep),
        todelete_subdir=TRASH_DIR,
        enable_async_checkpointing=True)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(mngr: ocp.CheckpointManager, state: GANState, config) -> None:
    """Saves asynchronously at state.step; call `mngr.wait_until_finished()` before exiting."""
    step = int(jax.device_get(state.step))
    if step in mngr.all_steps():
        return
    empty_trash(mngr)
    params, stats = sampling_generator(state)
    items = {"state": ocp.args.StandardSave(state),
             "generator": ocp.args.StandardSave({"params": params, "stats": stats}),
             "config": ocp.args.JsonSave(config.to_dict())}
    if config.loss.name == "ssgan":  # the semi-supervised critic is the classifier users want
        d = state.d_ema or {"params": state.d_params, "stats": state.d_stats}
        items["critic"] = ocp.args.StandardSave(d)
    mngr.save(step, args=ocp.args.Composite(**items))


def empty_trash(mngr: ocp.CheckpointManager) -> None:
    """Deletes steps Orbax has already moved out of the listing (see TRASH_DIR); on the main
    process only in a multi-host run (the others would race it on a shared workdir)."""
    trash = os.path.join(str(mngr.directory), TRASH_DIR)
    if jax.process_index() == 0 and os.path.isdir(trash):
        for name in os.listdir(trash):
            shutil.rmtree(os.path.join(trash, name), ignore_errors=True)


def _placed(abstract):
    """Leaves without a sharding (numpy, ShapeDtypeStruct) restore onto this process's first
    device: Orbax would otherwise use the saved sharding, which names the devices of the run
    that wrote it and fails on another topology (a multi-device or multi-host run's checkpoint
    restored on one device). Leaves with a sharding (a global array) keep it."""
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def leaf(x):
        if getattr(x, "sharding", None) is not None:
            return x
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=one)

    return jax.tree.map(leaf, abstract)


def restore_state(mngr: ocp.CheckpointManager, abstract_state: GANState,
                  step: int | None = None) -> GANState:
    """The full state at `step` (latest by default), laid out like `abstract_state`.

    Checkpoints written before GANState grew a field that this recipe leaves empty ({}: an
    EMA or history it does not keep) lack that key; they restore without it.
    """
    step = mngr.latest_step() if step is None else step

    def restore(target):
        return mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_placed(target)))).state

    try:
        return restore(abstract_state)
    except ValueError:
        fields = {f.name: getattr(abstract_state, f.name)
                  for f in dataclasses.fields(abstract_state)}
        empty = {k: {} for k in ADDED_FIELDS if fields[k] == {}}
        if not empty:
            raise
        rest = restore({k: v for k, v in fields.items() if k not in empty})
        return type(abstract_state)(**rest, **empty)


def _existing(workdir: str) -> ocp.CheckpointManager:
    if not os.path.isdir(workdir):
        raise CheckpointError(f"workdir {workdir!r} does not exist; train first with "
                              f"`python -m jaxgan.train --workdir {workdir}`")
    if not os.path.isdir(checkpoint_dir(workdir)):
        raise CheckpointError(f"no checkpoints in {workdir!r}; train first with "
                              f"`python -m jaxgan.train --workdir {workdir}`")
    return manager(workdir, create=False)


def resolve_step(mngr: ocp.CheckpointManager, workdir: str, step: int | None) -> int:
    steps = mngr.all_steps()
    if not steps:
        raise CheckpointError(f"no complete checkpoint in {workdir!r}")
    if step is None:
        return max(steps)
    if step not in steps:
        raise CheckpointError(f"no checkpoint at step {step} in {workdir!r}; available: "
                              f"{', '.join(map(str, sorted(steps)))}")
    return step


def load_config(workdir: str, step: int | None = None) -> tuple[ml_collections.ConfigDict, int]:
    """The recipe a checkpoint was trained with, and the resolved step."""
    mngr = _existing(workdir)
    step = resolve_step(mngr, workdir, step)
    restored = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return ml_collections.ConfigDict(restored.config), step


def restore_generator(workdir: str, abstract: dict, step: int) -> dict:
    """{"params", "stats"} of the generator alone (its EMA when the run kept one; the critic and
    optimizers stay on disk)."""
    return restore_item(workdir, "generator", abstract, step)


def restore_item(workdir: str, item: str, abstract: dict, step: int) -> dict:
    """One item of a checkpoint alone: "generator", or "critic" (semi-supervised runs)."""
    mngr = _existing(workdir)
    restored = mngr.restore(step, args=ocp.args.Composite(
        **{item: ocp.args.StandardRestore(_placed(abstract))}))
    return restored[item]
