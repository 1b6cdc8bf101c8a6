"""Two-process (multi-controller) data-parallel training on one machine, over loopback.

Each process runs this file with its own JAXGAN_PROCESS_ID; `jax.distributed.initialize` joins
them, `jax.devices()` then lists the devices of every process, and the library's step is the
same jit + NamedSharding program as on one host (XLA:CPU talks between processes with gloo).

    bash scripts/multihost_demo.sh            # starts both processes, prints both logs

or by hand, one terminal each:

    JAXGAN_COORDINATOR=127.0.0.1:12355 JAXGAN_NUM_PROCESSES=2 JAXGAN_PROCESS_ID=0 \
        python scripts/multihost_demo.py --workdir /tmp/mh
    JAXGAN_COORDINATOR=127.0.0.1:12355 JAXGAN_NUM_PROCESSES=2 JAXGAN_PROCESS_ID=1 \
        python scripts/multihost_demo.py --workdir /tmp/mh

--mode step (default) drives `step.make_train_step` directly; --mode train calls
`train.train_and_evaluate` (what `python -m jaxgan.train` runs; add --stream for the
data.Prefetcher path). Both processes must print the same metrics.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax

from jaxgan.distributed import initialize_from_env


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/jaxgan_multihost")
    ap.add_argument("--mode", choices=("step", "train"), default="step")
    ap.add_argument("--local_devices", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--stream", action="store_true",
                    help="--mode train: stream batches (data.Prefetcher) instead of a "
                         "device-resident dataset")
    args = ap.parse_args()

    jax.config.update("jax_platforms", "cpu")
    os.environ.setdefault("JAXGAN_LOCAL_DEVICES", str(args.local_devices))
    initialize_from_env()  # the library's: what `python -m jaxgan.train` calls first
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "tests"))
    from conftest import tiny_image_config
    from jaxgan import data as data_lib, models, optim, state as state_lib, step as step_lib
    from jaxgan import train as train_lib

    pid = jax.process_index()
    print(f"[{pid}] process {pid}/{jax.process_count()}: {jax.local_device_count()} local of "
          f"{jax.device_count()} devices", flush=True)
    c = tiny_image_config(**{"train.steps": args.steps})
    if args.stream:
        c.data.device_budget_mb = 0
    if args.mode == "train":
        state, metrics = train_lib.train_and_evaluate(c, args.workdir, progress=False)
        print(f"[{pid}] train_and_evaluate: step {int(state.step)} {metrics}", flush=True)
        return

    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    ds = data_lib.load(c)
    g, d = models.build(c)
    g_tx, d_tx = optim.make(c)
    # Every process builds the same state from the seed; out_shardings makes it a global array
    # (replicated over all processes' devices) without any host-to-global transfer.
    create = jax.jit(lambda: state_lib.create(int(c.seed), g, d, g_tx, d_tx, int(c.model.z_dim),
                                              models.data_shape(c), ds.num_examples),
                     out_shardings=replicated)
    state = create()
    # The device-resident dataset: every process holds all of it (replicated), so build the
    # global array from the process-local copy.
    data = {"images": jax.make_array_from_process_local_data(replicated, ds.images)}
    step = jax.jit(step_lib.make_train_step(g, d, g_tx, d_tx, c, batch), donate_argnums=0)
    for i in range(args.steps):
        state, metrics = step(state, data)
        jax.block_until_ready(state)
    m = {k: round(float(v), 6) for k, v in jax.device_get(metrics).items()}
    print(f"[{pid}] {args.steps} steps on {jax.device_count()} devices: {m}", flush=True)


if __name__ == "__main__":
    main()
