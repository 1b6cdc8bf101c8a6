"""Data parallelism: N fake CPU devices compute what 1 device computes on the same global batch.

One subprocess (the number of CPU devices is fixed when the backend starts, so
`jax.config.update('jax_num_cpu_devices', 4)` must run before anything touches a device) builds
the state once per recipe and runs the library's step (`step.make_train_step` with the
`batch_sharding` that `train._sharding()` builds) on meshes of 1, 2 and 4 devices. It records
the final parameters and statistics, the last metrics, how the batch and the state were sharded,
and how many all-reduces the compiled step holds.

Two recipes: a DCGAN with batch norm in G and D (batch-norm moments must be global, not
per-device) and a WGAN-GP with a layer-norm critic and n_critic=2 (the penalty's
gradient-of-gradient under sharding).

Tolerances: losses and metrics agree to float rounding (the summation order changes with the
split). Parameters agree to Adam's step size: where a gradient is ~0, rounding noise can flip its
sign and Adam turns that into a +-lr update. Here that is the bias of the critic's conv before
batch norm (its exact gradient is 0) and, through it, that batch norm's running mean; so
parameters and statistics are compared with atol=3*lr*steps, and in addition 99% of all entries
must agree to 1e-5 (in practice all but those 16 biases and 16 means).

Time: XLA:CPU spends seconds compiling random initializers (threefry + erf_inv), so the worker
compiles the state initialisation at LLVM -O0 (it is not what is under test) and, unless
JAXGAN_TEST_FULL_OPT=1, the steps too: partitioning and collectives are HLO passes that run the
same at every backend optimisation level.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import TEST_XLA_FLAGS

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
STEPS = 2
DEVICES = (1, 2, 4)
LR = 2e-4  # base_config's Adam lr for G and D (tiny_image_config keeps it)

RECIPES = {
    "dcgan_batchnorm": {"loss.name": "gan", "model.g_norm": "batch", "model.d_norm": "batch"},
    "wgan_gp_layernorm": {"loss.name": "wgan-gp", "model.d_norm": "layer", "train.n_critic": 2},
}

WORKER = r"""
import json, os, sys
out_dir, recipes, steps, devices = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
import jax
jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", max(devices))
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
sys.path.insert(0, os.environ["JAXGAN_TESTS"])
from conftest import tiny_image_config
from jaxgan import data as data_lib, models, optim, state as state_lib, step as step_lib
from jaxgan import train as train_lib

assert jax.device_count() == max(devices), jax.devices()
fast = {"xla_backend_optimization_level": 0}
step_opts = None if os.environ.get("JAXGAN_TEST_FULL_OPT") == "1" else fast
report = {}
for name, overrides in recipes.items():
    c = tiny_image_config(**overrides)
    ds = data_lib.load(c)
    g, d = models.build(c)
    g_tx, d_tx = optim.make(c)
    create = jax.jit(lambda: state_lib.create(int(c.seed), g, d, g_tx, d_tx, int(c.model.z_dim),
                                              models.data_shape(c), ds.num_examples))
    state0 = create.lower().compile(fast)()
    for n in devices:
        if n == 1:
            replicated, batch = None, None
        elif n == jax.device_count():
            replicated, batch = train_lib._sharding()  # what train_and_evaluate uses
        else:
            mesh = Mesh(np.array(jax.devices()[:n]), ("data",))
            replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
        state = state0 if replicated is None else jax.device_put(state0, replicated)
        data = data_lib.device_data(ds, replicated)
        step = jax.jit(step_lib.make_train_step(g, d, g_tx, d_tx, c, batch))
        step = step.lower(state, data).compile(step_opts)
        hlo = step.as_text()
        for _ in range(steps):
            state, metrics = step(state, data)
            jax.block_until_ready(state)  # CPU collectives: never run far ahead
        report[f"{name}/{n}"] = {
            "metrics": {k: float(v) for k, v in jax.device_get(metrics).items()},
            "batch_spec": None if batch is None else [str(a) for a in batch.spec],
            "batch_devices": 1 if batch is None else len(batch.device_set),
            "state_devices": len(jax.tree.leaves(state.d_params)[0].sharding.device_set),
            "all_reduce": hlo.count("all-reduce(") + hlo.count("all-reduce-start("),
        }
        leaves = jax.tree_util.tree_flatten_with_path(
            jax.device_get((state.g_params, state.d_params, state.g_stats, state.d_stats)))[0]
        np.savez(os.path.join(out_dir, f"{name}_{n}.npz"),
                 **{jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves})
with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(report, f)
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{(recipe, n): (report, npz path)} from one 4-device subprocess."""
    out = str(tmp_path_factory.mktemp("parallel"))
    env = dict(os.environ, JAXGAN_TESTS=TESTS, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    # -O0 like the rest of the suite; this also drops a stray
    # --xla_force_host_platform_device_count, which would win over jax_num_cpu_devices
    env["XLA_FLAGS"] = TEST_XLA_FLAGS
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, out, json.dumps(RECIPES), str(STEPS), json.dumps(DEVICES)],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"worker failed:\n{proc.stderr[-4000:]}"
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    return {(name, n): (report[f"{name}/{n}"], os.path.join(out, f"{name}_{n}.npz"))
            for name in RECIPES for n in DEVICES}


@pytest.mark.parametrize("name", list(RECIPES))
def test_batch_is_split_over_the_devices(runs, name):
    assert runs[name, 1][0]["batch_spec"] is None  # one device: no mesh, no constraint
    assert runs[name, 1][0]["all_reduce"] == 0
    for n in DEVICES[1:]:
        r = runs[name, n][0]
        assert r["batch_spec"] == ["data"], r
        assert r["batch_devices"] == n and r["state_devices"] == n, r
        # gradient means and batch-norm / layer moments over the sharded batch
        assert r["all_reduce"] > 0, f"no all-reduce in the compiled {n}-device step"


@pytest.mark.parametrize("name", list(RECIPES))
@pytest.mark.parametrize("n", DEVICES[1:])
def test_n_devices_compute_what_one_device_computes(runs, n, name):
    (m1, path1), (mn, path_n) = runs[name, 1], runs[name, n]
    m1, mn = m1["metrics"], mn["metrics"]
    assert m1.keys() == mn.keys() and {"d/loss", "g/loss"} <= m1.keys()
    for k in sorted(m1):
        np.testing.assert_allclose(mn[k], m1[k], rtol=1e-4, atol=1e-5, err_msg=k)

    a, b = np.load(path1), np.load(path_n)
    assert sorted(a.files) == sorted(b.files)
    total = close = 0
    for k in a.files:  # keys: [0] g_params, [1] d_params, [2] g_stats, [3] d_stats
        x, y = a[k], b[k]
        assert x.shape == y.shape, k
        np.testing.assert_allclose(y, x, atol=3 * LR * STEPS, err_msg=k)
        total += x.size
        close += int(np.sum(np.abs(x - y) <= 1e-5))
    assert close / total > 0.99, f"only {close}/{total} entries agree to 1e-5"
