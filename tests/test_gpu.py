"""The library on a GPU: the code paths that only a GPU runs, checked on the device itself.

CI has no GPU, and the suite runs on the CPU backend (conftest.py), so these tests skip there.
On a machine with a GPU and a CUDA build of jaxlib:

    JAX_PLATFORMS=cuda python -m pytest -p no:xdist tests/test_gpu.py

(`scripts/device_check.sh` runs this and the GPU benchmarks in one go.) What they check:
the backend picks the VJP table in XLA's own forms ('table') and the sub-pixel upsampling; the
HW6 step computed that way (the critic's first layer by space to depth) equals the step computed
with JAX's own VJPs on the same GPU; the bf16 HW6 WGAN-GP step stays close to f32; and the CLIs
train, checkpoint and sample there.
"""
import os
import sys

# This process and the CLIs it starts share the GPU: each allocates what it uses instead of
# JAX's default reservation of 75% of the device (read when the backend starts, below).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from conftest import REPO, run_module  # noqa: E402
from jaxgan import config as config_lib, layers, models, optim  # noqa: E402
from jaxgan import step as step_lib  # noqa: E402

sys.path.insert(0, os.path.join(REPO, "scripts"))
import benchmark  # noqa: E402  (the HW6 setup the GPU benchmarks time)

# JAXGAN_GPU_TESTS_ON_CPU=1 runs these on the CPU backend instead: a dry run of the tests'
# own logic on a machine without a GPU (what was done before they first met one).
ON_CPU = os.environ.get("JAXGAN_GPU_TESTS_ON_CPU") == "1"
pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu" and not ON_CPU,
                                reason="needs a GPU backend: JAX_PLATFORMS=cuda")


def hw6_config(loss: str, batch: int, dtype: str = "float32"):
    """The benchmark's HW6 recipe, WGAN-GP with 2 critic updates instead of 5 (a faster test)."""
    c = benchmark.hw6_config(loss, batch)
    c.train.dtype = dtype
    if loss == "wgan-gp":
        c.train.n_critic = 2
    config_lib.validate(c)
    return c


def init(c, n_img: int):
    """The benchmark's initial state and device-resident random images."""
    return benchmark.initial_state(c, n_img), benchmark.random_images(n_img)


def one_step(c, state, data):
    g, d = models.build(c)
    g_tx, d_tx = optim.make(c)
    return jax.jit(step_lib.make_train_step(g, d, g_tx, d_tx, c))(state, data)


def test_the_gpu_runs_the_vjp_table_and_subpixel_upsampling(monkeypatch):
    """On the device the HW6 models trace to lax's own convolutions inside the conv VJP table
    ('table': XLA's own forms, no phases or GEMMs, which are the CPU's)."""
    if ON_CPU:  # answer as on the GPU backend
        for name in ("default_conv_impl", "default_upsample_impl"):
            monkeypatch.setattr(layers, name, lambda backend, f=getattr(layers, name): f("gpu"))
    backend = jax.default_backend()
    assert layers.default_conv_impl(backend) == "table"
    assert layers.default_upsample_impl(backend) == "subpixel"
    c = hw6_config("gan", 2)
    g, d = models.build(c)
    z, x = jnp.zeros((2, c.model.z_dim)), jnp.zeros((2, 64, 64, 3))
    gv = jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), z, train=False))
    dv = jax.eval_shape(lambda: d.init(jax.random.PRNGKey(0), x, train=False))
    jaxpr = str(jax.make_jaxpr(lambda gv, dv: (g.apply(gv, z, train=False),
                                               d.apply(dv, x, train=False)))(gv, dv))
    assert "conv_general_dilated" in jaxpr
    assert "custom_vjp_call" in jaxpr


@pytest.mark.parametrize("loss", ["gan", "wgan-gp"])
def test_hw6_step_equals_lax_own_gradients_on_the_same_device(loss, monkeypatch):
    """The GPU's convolution gradients (the VJP table in XLA's forms, which computes WGAN-GP's
    second order differently, and the critic's first layer by space to depth) and JAX's own
    are the same functions; so are the 12-channel convs as GEMMs (`THIN_GEMM_MAX_CHANNELS`).
    At the 'highest' matmul precision (no TF32), so the difference is float32 summation order: both
    models' outputs and VJPs (train mode, fixed inputs and cotangents) to 1e-5, and one step's
    losses to 1e-4.

    One step's gradient norms only to 1e-3, and its parameters not at all: the HW6 critic's
    gradient at init is ill-conditioned in its input. The two formulations' fakes differ by
    1e-6, which moves some critic gradient leaves by 0.4% and d/grad_norm by 4e-5 (noise of 1e-6
    added to the fakes does the same); Adam's first step turns that into sign flips of +-lr in
    0.8% of the parameters, and g/grad_norm came out 3.8e-4 apart under jax 0.11.2, on CPU and
    on an H200 alike (1e-6 under jax 0.10.2, by luck of the summation order)."""
    c = hw6_config(loss, batch=8)
    runs = []
    with jax.default_matmul_precision("highest"):
        state, data = init(c, 16)
        # (conv, upsample, THIN_GEMM_MAX_CHANNELS): the defaults, JAX's own VJPs, and a
        # candidate GPU default, the 12-channel convs as GEMMs
        forms = [("table", "subpixel", 0), ("xla", "subpixel", 0), ("table", "subpixel", 16)]
        for conv, upsample, thin in forms:
            monkeypatch.setattr(layers, "default_conv_impl", lambda backend, v=conv: v)
            monkeypatch.setattr(layers, "default_upsample_impl", lambda backend, v=upsample: v)
            monkeypatch.setattr(layers, "THIN_GEMM_MAX_CHANNELS", thin)
            runs.append((model_vjps(c, state, data), one_step(c, state, data)[1]))
    (a, ma), *others = runs
    for (b, mb), form in zip(others, forms[1:]):
        for k in a:
            err = np.linalg.norm(b[k] - a[k]) / np.linalg.norm(a[k])
            assert err < 1e-5, (form, k, err)
        for k in ma:
            rtol = 1e-3 if k.endswith("grad_norm") else 1e-4
            np.testing.assert_allclose(mb[k], ma[k], rtol=rtol, atol=1e-5, err_msg=f"{form} {k}")


def model_vjps(c, state, data) -> dict:
    """Train-mode outputs of both models and their VJPs for fixed inputs and cotangents,
    each flattened to one vector."""
    g, d = models.build(c)
    g_apply, d_apply = step_lib.apply_fn(g), step_lib.apply_fn(d)
    kz, kg, kd = jax.random.split(jax.random.PRNGKey(7), 3)
    z, real = jax.random.normal(kz, (8, c.model.z_dim)), data["images"][:8]

    @jax.jit
    def run(state):
        fake, g_vjp = jax.vjp(lambda p, z: g_apply(p, state.g_stats, z, True)[0],
                              state.g_params, z)
        score, d_vjp = jax.vjp(lambda p, x: d_apply(p, state.d_stats, x, True)[0],
                               state.d_params, real)
        return {"fake": fake, "g_vjp": g_vjp(jax.random.normal(kg, fake.shape)),
                "score": score, "d_vjp": d_vjp(jax.random.normal(kd, score.shape))}

    def flat(tree):  # float leaves only: integer inputs' cotangents are float0
        return np.concatenate([np.ravel(v) for v in jax.tree.leaves(tree)
                               if jnp.issubdtype(v.dtype, jnp.floating)])
    return {k: flat(v) for k, v in run(state).items()}


def test_bf16_hw6_wgan_gp_step_is_close_to_float32():
    """train.dtype='bfloat16' on the HW6 model (layer-norm critic, penalty through the convs):
    params and optimizer states stay f32, every metric is f32 and finite, and the step's
    losses, penalty and gradient norms agree with f32's.

    Dry run on CPU (batch 8, n_critic 2): losses, penalty, |grad_x D| and g's gradient norm
    within 0.8%, checked to 5%; the critic's gradient norm 8.6% below f32's, checked to 15%.
    That gap is bf16's, not the convolutions': XLA's own VJPs give the same 8.7%, and it sits in
    the first layers, whose batch-summed gradients cancel (the plain critic score's gradient for
    the first kernel is 8% off in bf16 too)."""
    c32, c16 = hw6_config("wgan-gp", 8), hw6_config("wgan-gp", 8, "bfloat16")
    state, data = init(c32, 16)
    a, ma = one_step(c32, state, data)
    b, mb = one_step(c16, state, data)
    for leaf in jax.tree.leaves((b.g_params, b.d_params, b.g_opt, b.d_opt)):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
    assert all(v.dtype == jnp.float32 and np.isfinite(float(v)) for v in mb.values())
    for k in ("d/loss", "d/gp", "d/gp_grad_norm", "g/grad_norm", "g/loss"):
        np.testing.assert_allclose(mb[k], ma[k], rtol=5e-2, err_msg=k)
    np.testing.assert_allclose(mb["d/grad_norm"], ma["d/grad_norm"], rtol=0.15)


def test_train_checkpoint_and_sample_clis_on_the_gpu(tmp_path):
    def cli(*args):  # on the GPU (JAX_PLATFORMS as this process has it), compiled as users do
        r = run_module(*args, platform="cpu" if ON_CPU else None, default_xla_flags=True,
                       timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        return r

    work = str(tmp_path / "run")
    cli("jaxgan.train", "--config", "configs/default.py", "--workdir", work,
        "--config.train.steps=4", "--config.train.checkpoint_every=2",
        "--config.train.sample_every=2", "--config.train.log_every=2", "--noprogress")
    cli("jaxgan.train", "--config", "configs/default.py", "--workdir", work,
        "--config.train.steps=6", "--noprogress")  # resumes from step 4
    steps = sorted(int(n) for n in os.listdir(os.path.join(work, "checkpoints")) if n.isdigit())
    assert steps[-1] == 6, steps
    cli("jaxgan.sample", "--workdir", work, "--num", "5", "--out", str(tmp_path / "s.npz"))
    images = np.load(tmp_path / "s.npz")["images"]
    assert images.shape[0] == 5 and np.isfinite(images).all()
