"""Crash safety and the divergence guard, on real `python -m jaxgan.train` subprocesses.

Signals (SIGINT, SIGTERM) and `kill -9` are sent to a process that is really stepping; a NaN is
injected through the recipe (a huge critic learning rate). Every run is the default recipe made
tiny with --config.* overrides. The subprocesses share a persistent JAX compilation cache, so
only the first one pays the full compile.
"""
import json
import os
import random
import signal
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import start_module

TIMEOUT = 300  # seconds for one subprocess to start stepping or finish (a loaded 2-core machine)

TINY = ["--config", "configs/default.py", "--noprogress",
        "--config.model.g_width=8", "--config.model.d_width=8", "--config.model.z_dim=8",
        "--config.train.batch_size=16", "--config.train.num_grid=4",
        "--config.train.log_every=1", "--config.train.sample_every=100000"]
FOREVER = "--config.train.steps=1000000"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(tmp_path_factory.mktemp("jax_cache"))
    return dict(os.environ, PYTHONUNBUFFERED="1",
                JAX_COMPILATION_CACHE_DIR=cache,
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")


class Run:
    """One `python -m jaxgan.train` subprocess; stdout and stderr go to files (no pipe stalls)."""

    count = 0

    def __init__(self, workdir, *overrides, env):
        Run.count += 1
        self.workdir = str(workdir)
        base = os.path.join(os.path.dirname(self.workdir), f"run{Run.count}")
        self.out_path, self.err_path = base + ".out", base + ".err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = start_module("jaxgan.train", *TINY, f"--workdir={self.workdir}",
                                     *overrides, env=env, stdout=out, stderr=err)

    @property
    def stdout(self):
        return open(self.out_path).read()

    @property
    def stderr(self):
        return open(self.err_path).read()

    @property
    def output(self):
        return self.stdout + self.stderr

    def wait(self, timeout=TIMEOUT):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"timed out after {timeout}s:\n{self.output}")

    def wait_for_step(self, after: int, timeout=TIMEOUT) -> int:
        """Blocks until this process has logged a step > `after`; returns that step."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            step = last_logged_step(self.workdir)
            if step > after:
                return step
            if self.proc.poll() is not None:
                pytest.fail(f"exited with {self.proc.returncode} before stepping:\n{self.output}")
            time.sleep(0.05)
        self.proc.kill()
        pytest.fail(f"no step after {after} within {timeout}s:\n{self.output}")


def last_logged_step(workdir) -> int:
    try:
        lines = open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()
    except FileNotFoundError:
        return 0
    steps = []
    for line in lines:  # the last line may be cut short by kill -9
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:
            pass
    return max(steps, default=0)


def checkpoints(workdir) -> dict:
    """{step: restored state dict} for every step directory; fails if any does not restore.

    Orbax's temporary directories (a save cut short) are allowed; a numbered directory that
    does not restore completely, or holds a non-finite array, is not.
    """
    root = os.path.join(workdir, "checkpoints")
    numbered = sorted(int(n) for n in os.listdir(root) if n.isdigit())
    mngr = ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(create=False))
    assert sorted(mngr.all_steps()) == numbered, os.listdir(root)
    out = {}
    for step in numbered:
        restored = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(), generator=ocp.args.StandardRestore(),
            config=ocp.args.JsonRestore()))
        state = jax.device_get(restored.state)
        assert int(state["step"]) == step
        for leaf in jax.tree.leaves((state, restored.generator)):
            assert np.all(np.isfinite(np.asarray(leaf, dtype=np.float64))), f"step {step}"
        assert restored.config["model"]["g_width"] == 8
        out[step] = state
    mngr.close()
    return out


def _stopped_by_signal(run: Run, sig: signal.Signals, after: int) -> int:
    """Sends `sig` once the run steps past `after`; checks the save and the resume hint."""
    reached = run.wait_for_step(after)
    run.proc.send_signal(sig)
    assert run.wait() == 0, run.output
    lines = [l for l in run.output.splitlines() if "saved a checkpoint" in l]
    assert lines and lines[0].startswith(sig.name), run.output
    assert "resume with the same command" in lines[0] and run.workdir in lines[0], run.output
    step = int(lines[0].split("at step ")[1].split(";")[0])
    assert step >= reached
    assert last_logged_step(run.workdir) == step  # the checkpoint is at the step it reached
    assert step in checkpoints(run.workdir)
    return step


def test_sigint_and_sigterm_save_a_checkpoint_and_the_next_start_resumes(tmp_path, env):
    work = tmp_path / "run"
    first = Run(work, FOREVER, "--config.train.checkpoint_every=100000", env=env)
    s1 = _stopped_by_signal(first, signal.SIGINT, after=0)
    assert sorted(checkpoints(str(work))) == [s1]  # no periodic save: this one came from SIGINT

    second = Run(work, FOREVER, "--config.train.checkpoint_every=100000", env=env)
    s2 = _stopped_by_signal(second, signal.SIGTERM, after=s1)
    assert f"resumed from step {s1}" in second.output
    assert s2 > s1 and sorted(checkpoints(str(work))) == [s1, s2]

    last = Run(work, f"--config.train.steps={s2 + 2}", "--config.train.checkpoint_every=100000",
               env=env)
    assert last.wait() == 0, last.output
    assert f"resumed from step {s2}" in last.output and "done:" in last.output
    assert max(checkpoints(str(work))) == s2 + 2


def test_kill_9_even_during_a_save_leaves_a_checkpoint_the_next_start_resumes(tmp_path, env):
    """Every step saves (checkpoint_every=1) and a save outlasts a step of this tiny model, so
    a kill after a random delay almost always lands inside a save or a deletion of an old one."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    work = str(tmp_path / "run")
    args = (FOREVER, "--config.train.checkpoint_every=1", "--config.train.keep_checkpoints=2")
    latest, cut_saves = 0, 0
    for attempt in range(2):
        run = Run(work, *args, env=env)
        # A step > latest + 2 is logged after the save of latest + 2 began, which waits for the
        # save of latest + 1 to finish: there is a complete checkpoint newer than the last run's.
        run.wait_for_step(latest + 2)
        time.sleep(rng.uniform(0.0, 0.5))
        run.proc.send_signal(signal.SIGKILL)
        assert run.wait() == -signal.SIGKILL
        if attempt:
            assert f"resumed from step {latest}" in run.output, (seed, run.output)
        cut_saves += any(not n.isdigit() for n in os.listdir(os.path.join(work, "checkpoints")))
        saved = checkpoints(work)  # every numbered directory restores, finite
        assert max(saved) > latest, (seed, run.output)
        latest = max(saved)
    print(f"seed {seed}: {cut_saves} of 2 kills left a save unfinished")

    final = Run(work, f"--config.train.steps={latest + 2}", "--config.train.checkpoint_every=1",
                "--config.train.keep_checkpoints=2", env=env)
    assert final.wait() == 0, (seed, final.output)
    assert f"resumed from step {latest}" in final.output
    assert max(checkpoints(work)) == latest + 2


def test_a_nan_stops_training_with_exit_3_and_keeps_the_last_good_checkpoint(tmp_path, env):
    work = str(tmp_path / "run")
    good = Run(work, "--config.train.steps=2", "--config.train.checkpoint_every=1", env=env)
    assert good.wait() == 0, good.output
    before = checkpoints(work)
    assert sorted(before) == [1, 2]
    stamps = {n: os.path.getmtime(os.path.join(work, "checkpoints", n))
              for n in os.listdir(os.path.join(work, "checkpoints"))}

    # The learning rate is not part of the state's shape, so the run resumes and then diverges.
    bad = Run(work, "--config.train.steps=20", "--config.train.checkpoint_every=1",
              "--config.optim.d.lr=1e30", env=env)
    assert bad.wait() == 3, bad.output
    assert "resumed from step 2" in bad.output
    err = bad.stderr.strip().splitlines()
    assert len(err) == 1, bad.stderr  # one line, no traceback
    assert err[0].startswith("error: non-finite") and "at step 3" in err[0], err
    assert "loss" in err[0] and "learning rate" in err[0], err

    after = checkpoints(work)  # restores, all finite
    assert sorted(after) == [1, 2]
    assert {n: os.path.getmtime(os.path.join(work, "checkpoints", n))
            for n in os.listdir(os.path.join(work, "checkpoints"))} == stamps
    for x, y in zip(jax.tree.leaves(before[2]), jax.tree.leaves(after[2])):
        np.testing.assert_array_equal(x, y)


def test_the_losses_plot_never_raises_into_training(tmp_path, caplog):
    from jaxgan import plots
    out = str(tmp_path / "losses.png")
    assert plots.plot_losses(str(tmp_path / "missing.jsonl"), out) is None
    path = tmp_path / "metrics.jsonl"
    path.write_text("not json\n[1, 2]\n{\"no_step\": 1}\n")
    assert plots.plot_losses(str(path), out) is None and not os.path.exists(out)
    rows = [{"step": i, "d/loss": 1.0 / i, "g/loss": float(i), "d/wasserstein": -0.1 * i,
             "d/gp": 0.5, "d/grad_norm": 2.0, "g/grad_norm": 0.0, "train/images_per_sec": 100.0}
            for i in range(1, 1001)]
    rows[500]["g/loss"] = float("nan")  # json writes NaN; a diverged run logs one at most
    with open(path, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
        f.write('{"step": 1001, "d/lo')  # a line cut short by kill -9
    start = time.perf_counter()
    assert plots.plot_losses(str(path), out) == out
    print(f"losses.png from 1000 lines in {time.perf_counter() - start:.2f}s")
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp.png")] == []
    # an unwritable destination is logged, not raised
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert plots.plot_losses(str(path), str(blocker / "losses.png")) is None
    assert "could not write" in caplog.text
