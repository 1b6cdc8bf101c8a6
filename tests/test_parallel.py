"""Data parallelism: N fake CPU devices compute what 1 device computes on the same global batch.

Each device count runs in its own Python process, because the number of CPU devices is fixed
when the backend starts (`jax.config.update('jax_num_cpu_devices', N)` must come first). The
worker trains through the library entry point `train.train_and_evaluate` (which builds the mesh
with `train._sharding()`), writes the final state and metrics to an .npz, and records how the
batch was sharded and whether the compiled step holds a cross-device all-reduce.

Two recipes: a DCGAN with batch norm in G and D (batch-norm moments must be global, not
per-device) and a WGAN-GP with a layer-norm critic and n_critic=2 (the penalty's
gradient-of-gradient under sharding).

Tolerances: losses, metrics and batch-norm statistics agree to float rounding (summation order
changes with the split). Parameters agree to Adam's step size: where a gradient is ~0, rounding
noise can flip its sign and Adam turns that into a +-lr update, so they are compared with
atol=2*lr*steps, and in addition nearly every entry must agree to 1e-5.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
STEPS = 2

RECIPES = {
    "dcgan_batchnorm": {"loss.name": "gan", "model.g_norm": "batch", "model.d_norm": "batch"},
    "wgan_gp_layernorm": {"loss.name": "wgan-gp", "model.d_norm": "layer", "train.n_critic": 2},
}

WORKER = r"""
import json, os, sys
n, out_dir, recipes = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
import jax
jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", n)
import numpy as np
sys.path.insert(0, os.environ["JAXGAN_TESTS"])
from conftest import tiny_image_config
from jaxgan import step as step_lib
from jaxgan import train as train_lib

assert jax.device_count() == n, jax.devices()
seen = {}
make = step_lib.make_train_step

def spy(generator, critic, g_tx, d_tx, config, batch_sharding=None):
    seen["batch_sharding"] = batch_sharding
    fn = make(generator, critic, g_tx, d_tx, config, batch_sharding)
    seen["fn"] = fn
    return fn

step_lib.make_train_step = spy
report = {}
for name, overrides in recipes.items():
    c = tiny_image_config(**overrides)
    c.train.steps = int(os.environ["JAXGAN_STEPS"])
    c.train.log_every = c.train.sample_every = c.train.checkpoint_every = c.train.steps
    state, metrics = train_lib.train_and_evaluate(c, os.path.join(out_dir, name), progress=False,
                                                  log=lambda *a: None)
    bs = seen["batch_sharding"]
    info = {"metrics": metrics,
            "batch_spec": None if bs is None else [str(a) for a in bs.spec],
            "batch_devices": 1 if bs is None else len(bs.device_set),
            "state_devices": len(jax.tree.leaves(state.d_params)[0].sharding.device_set)}
    if n > 1:
        # The compiled step of this recipe: the gradient / batch-norm reductions over the
        # sharded batch must be cross-device collectives.
        data = {"images": jax.device_put(np.zeros((64, 16, 16, 1), np.uint8),
                                         jax.sharding.NamedSharding(bs.mesh, jax.sharding.PartitionSpec()))}
        hlo = jax.jit(seen["fn"]).lower(state, data).compile().as_text()
        info["all_reduce"] = hlo.count("all-reduce(") + hlo.count("all-reduce-start(")
    report[name] = info
    leaves = jax.tree_util.tree_flatten_with_path(
        jax.device_get((state.g_params, state.d_params, state.g_stats, state.d_stats)))[0]
    np.savez(os.path.join(out_dir, name + ".npz"),
             **{jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves})
with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(report, f)
"""


def _run(n: int, out_dir: str) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    env = dict(os.environ, JAXGAN_TESTS=TESTS, JAXGAN_STEPS=str(STEPS), JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    env.pop("XLA_FLAGS", None)  # a stray --xla_force_host_platform_device_count would win
    proc = subprocess.run([sys.executable, "-c", WORKER, str(n), out_dir, json.dumps(RECIPES)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{n} devices failed:\n{proc.stderr[-4000:]}"
    with open(os.path.join(out_dir, "report.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    return {n: (_run(n, str(root / f"n{n}")), str(root / f"n{n}")) for n in (1, 2, 4)}


@pytest.mark.parametrize("n", [2, 4])
def test_batch_is_split_over_the_devices(runs, n):
    report, _ = runs[n]
    single, _ = runs[1]
    for name in RECIPES:
        assert single[name]["batch_spec"] is None  # one device: no mesh
        r = report[name]
        assert r["batch_spec"] == ["data"], r
        assert r["batch_devices"] == n and r["state_devices"] == n, r
        assert r["all_reduce"] > 0, f"{name}: no all-reduce in the compiled {n}-device step"


@pytest.mark.parametrize("name", list(RECIPES))
@pytest.mark.parametrize("n", [2, 4])
def test_n_devices_compute_what_one_device_computes(runs, n, name):
    ref_report, ref_dir = runs[1]
    report, out_dir = runs[n]
    m1, mn = ref_report[name]["metrics"], report[name]["metrics"]
    keys = set(m1) - {"train/steps_per_sec", "train/images_per_sec"}
    assert keys and keys == set(mn) - {"train/steps_per_sec", "train/images_per_sec"}
    for k in sorted(keys):
        np.testing.assert_allclose(mn[k], m1[k], rtol=1e-4, atol=1e-5, err_msg=k)

    a = np.load(os.path.join(ref_dir, name + ".npz"))
    b = np.load(os.path.join(out_dir, name + ".npz"))
    assert sorted(a.files) == sorted(b.files)
    lr = 2e-4  # base_config's Adam lr for G and D (tiny_image_config keeps it)
    total = close = 0
    for k in a.files:
        x, y = a[k], b[k]
        assert x.shape == y.shape, k
        if k.startswith(("[2]", "[3]")):
            # running batch-norm statistics: plain float sums, no Adam sign amplification
            np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5, err_msg=k)
        np.testing.assert_allclose(y, x, atol=2 * lr * STEPS, err_msg=k)
        total += x.size
        close += int(np.sum(np.abs(x - y) <= 1e-5))
    assert close / total > 0.99, f"only {close}/{total} parameters agree to 1e-5"
