"""Multi-host training: two `python -m jaxgan.train` processes joined by jax.distributed over
127.0.0.1 (XLA:CPU collectives over gloo), one CPU device each, against one process with two
devices: the same global mesh, so the same numbers.

The two-process run trains 2 steps with the dataset device-resident (data.limit=1000 is split
over the two processes' devices: each holds its half, the in-step gather crosses processes), then
resumes to 4 with the dataset streamed (data.Prefetcher; each process puts only its half of every
batch on its device); checkpoints are saved and restored by both processes together. The single
process trains 4 steps at once, resident. Checked: every process exits 0; metrics and the saved
state at step 4 agree (test_parallel.py's tolerances: only the summation order of the all-reduces
can differ); files other than checkpoints are written once (by process 0).

Skips when jax.distributed cannot start here (no loopback, no CPU collectives).
"""
import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO, TEST_XLA_FLAGS
from jaxgan import distributed

LR = 2e-4  # base_config's Adam lr
STEPS = 4
TIMEOUT = 150  # seconds for one phase (a loaded 2-core machine compiles slowly); a hang fails
TINY = ["--config", "configs/default.py", "--noprogress",
        "--config.model.g_width=8", "--config.model.d_width=8", "--config.model.z_dim=8",
        "--config.train.batch_size=16",
        "--config.train.num_grid=4", "--config.data.limit=1000",
        "--config.train.log_every=2", "--config.train.sample_every=4",
        "--config.train.checkpoint_every=2"]
JOIN_ERRORS = ("could not join the coordinator",  # jaxgan.distributed's one-line error
               "RegisterTask")  # jax's abort when a process cannot register


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]), **extra)
    # Both runs compile at LLVM -O0 (XLA:CPU spends seconds optimizing random initializers;
    # partitioning and collectives are HLO passes, the same at every level); this also drops a
    # stray --xla_force_host_platform_device_count, which would win over JAXGAN_LOCAL_DEVICES.
    env["XLA_FLAGS"] = TEST_XLA_FLAGS
    for k in ("JAXGAN_COORDINATOR", "JAXGAN_NUM_PROCESSES", "JAXGAN_PROCESS_ID"):
        if k not in extra:
            env.pop(k, None)
    return env


def _launch(jobs, tag):
    """Starts one `python -m jaxgan.train` per (workdir, args, env) at once; waits for all (at
    most TIMEOUT s, then kills what is left); returns [(returncode, stdout, stderr)]."""
    procs = []
    for i, (workdir, args, env) in enumerate(jobs):
        out, err = open(f"{workdir}.{tag}{i}.out", "w"), open(f"{workdir}.{tag}{i}.err", "w")
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "jaxgan.train", *TINY, *args, f"--workdir={workdir}"],
            cwd=REPO, env=env, stdout=out, stderr=err), out, err))
    deadline = time.monotonic() + TIMEOUT
    try:
        for p, _, _ in procs:
            p.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p, out, err in procs:
            if p.poll() is None:  # a hang (or a peer that died): never stall the suite
                p.kill()
                p.wait()
            out.close()
            err.close()
    return [(p.returncode, open(o.name).read(), open(e.name).read()) for p, o, e in procs]


def _two_processes(workdir, *args):
    port = _free_port()
    return [(workdir, args, _env(JAXGAN_COORDINATOR=f"127.0.0.1:{port}",
                                  JAXGAN_NUM_PROCESSES="2", JAXGAN_PROCESS_ID=str(i),
                                  JAXGAN_LOCAL_DEVICES="1", JAXGAN_INIT_TIMEOUT="30"))
            for i in range(2)]


def _check(results, names):
    lines = [l for rc, _, err in results if rc != 0 for l in err.splitlines()
             if any(e in l for e in JOIN_ERRORS)]
    if lines:
        pytest.skip(f"jax.distributed cannot start on this machine: {lines[0]}")
    for name, (rc, out, err) in zip(names, results):
        assert rc == 0, f"{name} exited {rc}:\n{out[-2000:]}\n{err[-4000:]}"
    return results


def _restore(workdir, step):
    """The saved state at `step` as numpy, on this (one-device) test process: the target puts
    every leaf on one device (the saved sharding names the writers' devices)."""
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.StandardCheckpointer() as ck:
        tree = ck.metadata(path).item_metadata.tree
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
                              tree)
        restored = ck.restore(path, target)
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(restored))[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}


def _metrics(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost")
    single, multi = str(root / "single"), str(root / "multi")
    # The baseline runs beside the first two-process run (they wait on each other's collectives)
    first = _check(_launch([*_two_processes(multi, f"--config.train.steps={STEPS // 2}"),
                            (single, [f"--config.train.steps={STEPS}"],
                             _env(JAXGAN_LOCAL_DEVICES="2"))], "a"),
                   ["process 0", "process 1", "the single process"])
    # resumed with the dataset streamed (data.Prefetcher): each process puts only its half of
    # every batch on its device; the position continues where the resident run stopped
    resumed = _check(_launch(_two_processes(multi, f"--config.train.steps={STEPS}",
                                            "--config.data.device_budget_mb=0"), "b"),
                     ["resumed process 0", "resumed process 1"])
    return {"single": single, "multi": multi, "first": first[:2], "resumed": resumed}


def test_two_processes_compute_what_one_process_with_two_devices_computes(runs):
    single, multi = _metrics(runs["single"]), _metrics(runs["multi"])
    assert [m["step"] for m in single] == [m["step"] for m in multi] == [2, 4]
    for a, b in zip(single, multi):
        for k in a:
            if not k.startswith("train/"):  # speeds differ
                np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)
    a, b = _restore(runs["single"], STEPS), _restore(runs["multi"], STEPS)
    assert sorted(a) == sorted(b)
    total = close = 0
    for k in a:
        assert a[k].shape == b[k].shape, k
        if a[k].dtype.kind in "iu":  # step, key, data position: exactly
            np.testing.assert_array_equal(b[k], a[k], err_msg=k)
            continue
        np.testing.assert_allclose(b[k], a[k], atol=3 * LR * STEPS, err_msg=k)
        total += a[k].size
        close += int(np.sum(np.abs(a[k] - b[k]) <= 1e-5))
    assert close / total > 0.99, f"only {close}/{total} entries agree to 1e-5"


def test_resume_and_files_written_once(runs):
    multi = runs["multi"]
    (_, out0, err0), (_, out1, err1) = runs["resumed"]
    assert "resumed from step 2" in out0 + err0  # process 0 logs
    assert "streaming" in out0 + err0
    assert "resumed from step" not in out1 + err1 and "done:" not in out1
    assert (out0 + out1).count("done:") == 1
    assert sorted(os.listdir(os.path.join(multi, "samples"))) == [  # each run's last step
        "step_0000002.png", "step_0000004.png"]
    tb = os.path.join(multi, "tensorboard")
    if os.path.isdir(tb):  # one event file per run of process 0 (tensorboardX installed)
        assert len(os.listdir(tb)) == 2, os.listdir(tb)
    assert sorted(int(s) for s in os.listdir(os.path.join(multi, "checkpoints"))
                  if s.isdigit()) == [2, 4]
    with open(os.path.join(multi, "config.json")) as f:
        assert json.load(f)["train"]["steps"] == STEPS
    assert os.path.isfile(os.path.join(multi, "losses.png"))


@pytest.mark.parametrize("env, message", [
    ({"JAXGAN_NUM_PROCESSES": "2"}, "JAXGAN_COORDINATOR, JAXGAN_PROCESS_ID not"),
    ({"JAXGAN_COORDINATOR": "10.0.0.1", "JAXGAN_NUM_PROCESSES": "2", "JAXGAN_PROCESS_ID": "0"},
     "must be host:port"),
    ({"JAXGAN_COORDINATOR": "h:1", "JAXGAN_NUM_PROCESSES": "2", "JAXGAN_PROCESS_ID": "2"},
     "JAXGAN_PROCESS_ID='2' must be an integer in 0..1"),
    ({"JAXGAN_COORDINATOR": "h:1", "JAXGAN_NUM_PROCESSES": "two", "JAXGAN_PROCESS_ID": "0"},
     "JAXGAN_NUM_PROCESSES='two'"),
    ({"JAXGAN_LOCAL_DEVICES": "0"}, "JAXGAN_LOCAL_DEVICES='0' must be an integer >= 1"),
])
def test_bad_variables_name_the_fix(env, message):
    with pytest.raises(distributed.DistributedError, match=message.replace(".", r"\.")):
        distributed.settings(env)


def test_settings():
    assert distributed.settings({}) is None
    assert distributed.settings({"JAXGAN_LOCAL_DEVICES": "4"}) == {"local_devices": 4}
    s = distributed.settings({"JAXGAN_COORDINATOR": "[::1]:7", "JAXGAN_NUM_PROCESSES": "3",
                              "JAXGAN_PROCESS_ID": "2", "JAXGAN_INIT_TIMEOUT": "9"})
    assert s == {"coordinator": "[::1]:7", "num_processes": 3, "process_id": 2, "timeout": 9}


def test_cli_bad_variable_is_one_line_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "jaxgan.train", f"--workdir={tmp_path / 'w'}"], cwd=REPO,
        env=_env(JAXGAN_COORDINATOR="127.0.0.1:1", JAXGAN_NUM_PROCESSES="2",
                 JAXGAN_PROCESS_ID="1", JAXGAN_INIT_TIMEOUT="1"),
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: process 1 of 2 could not join"), lines
    assert not os.path.exists(tmp_path / "w")
