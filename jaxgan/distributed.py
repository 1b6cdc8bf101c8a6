"""Multi-host (multi-controller) runs: one process per host, joined by `jax.distributed`.

Every host runs the same `python -m jaxgan.train ...` command with these variables set:

    JAXGAN_COORDINATOR=host0:12355   address of process 0, where the coordinator listens
    JAXGAN_NUM_PROCESSES=2           how many processes in all
    JAXGAN_PROCESS_ID=0              this process: 0 .. NUM_PROCESSES-1
    JAXGAN_LOCAL_DEVICES=2           optional: this many (fake) CPU devices per process
    JAXGAN_INIT_TIMEOUT=300          optional: seconds to wait for every process to join

After `initialize_from_env()`, `jax.devices()` lists the devices of every process and the step is
the same jit + NamedSharding program as on one host. Rules the training loop follows:
  * every process runs every jitted computation, in the same order (collectives pair up);
  * global arrays are built from what each process holds (`jax.jit(..., out_shardings=...)`,
    `jax.make_array_from_callback`), never by `jax.device_put` of a host array onto a sharding
    that spans processes;
  * only `is_main_process()` writes files other than checkpoints; Orbax checkpoints are saved
    and restored by all processes together.
"""
from __future__ import annotations

import os
import socket
import time

import jax
import numpy as np

from jaxgan.config import ConfigError

COORDINATOR, NUM_PROCESSES, PROCESS_ID = ("JAXGAN_COORDINATOR", "JAXGAN_NUM_PROCESSES",
                                          "JAXGAN_PROCESS_ID")
LOCAL_DEVICES, INIT_TIMEOUT = "JAXGAN_LOCAL_DEVICES", "JAXGAN_INIT_TIMEOUT"
REQUIRED = (COORDINATOR, NUM_PROCESSES, PROCESS_ID)


class DistributedError(ConfigError):
    """A JAXGAN_* variable that cannot work, or processes that could not join; one line."""


def _int(environ, name: str, low: int, high: int | None = None) -> int:
    raw = environ[name]
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        want = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"
        raise DistributedError(f"{name}={raw!r} must be {want}")
    return value


def settings(environ=None) -> dict | None:
    """The validated JAXGAN_* settings: None when this is a single-process run (none of the
    three required variables set); raises DistributedError for a partial or bad set."""
    environ = os.environ if environ is None else environ
    out = {}
    if environ.get(LOCAL_DEVICES, "") != "":
        out["local_devices"] = _int(environ, LOCAL_DEVICES, 1)
    given = [k for k in REQUIRED if environ.get(k, "") != ""]
    if not given:
        return out or None
    missing = [k for k in REQUIRED if k not in given]
    if missing:
        raise DistributedError(
            f"{', '.join(given)} set but {', '.join(missing)} not; a multi-host run needs all "
            f"of {', '.join(REQUIRED)} (see README 'Multi-host')")
    address = environ[COORDINATOR]
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f"{COORDINATOR}={address!r} must be host:port of process 0, "
                               "e.g. 10.0.0.1:12355")
    n = _int(environ, NUM_PROCESSES, 1)
    out.update(coordinator=address, num_processes=n,
               process_id=_int(environ, PROCESS_ID, 0, n - 1),
               timeout=_int(environ, INIT_TIMEOUT, 1) if environ.get(INIT_TIMEOUT) else 300)
    return out


def initialize_from_env(environ=None) -> bool:
    """`jax.distributed.initialize` from the JAXGAN_* variables, before any device is touched.

    Returns True when this process joined a multi-process run, False for a single process
    (only JAXGAN_LOCAL_DEVICES, if set, is applied). Raises DistributedError (one line) for a
    bad variable or when the processes cannot join within JAXGAN_INIT_TIMEOUT seconds.
    """
    s = settings(environ)
    if s is None:
        return False
    if "local_devices" in s and s["local_devices"] != jax.config.jax_num_cpu_devices:
        try:
            jax.config.update("jax_num_cpu_devices", s["local_devices"])
        except Exception as e:  # the backend already started in this process
            raise DistributedError(f"{LOCAL_DEVICES} must be set before JAX starts: "
                                   f"{' '.join(str(e).split())}") from e
    if "coordinator" not in s:
        return False
    if jax.distributed.is_initialized():  # main() called twice in one process (tests)
        return True
    if s["process_id"] > 0:  # jax aborts the process (no exception) when it cannot register
        _wait_for_coordinator(s)
    try:
        jax.distributed.initialize(coordinator_address=s["coordinator"],
                                   num_processes=s["num_processes"],
                                   process_id=s["process_id"],
                                   initialization_timeout=s["timeout"])
    except Exception as e:
        msg = " ".join(str(e).split())
        raise _join_error(s, msg[:300]) from e
    return True


def _join_error(s: dict, why: str) -> DistributedError:
    return DistributedError(
        f"process {s['process_id']} of {s['num_processes']} could not join the coordinator at "
        f"{s['coordinator']} (JAXGAN_INIT_TIMEOUT={s['timeout']} s): {why}; start every process "
        "with the same JAXGAN_COORDINATOR and JAXGAN_NUM_PROCESSES, process 0 on that host")


def _wait_for_coordinator(s: dict) -> None:
    """Until process 0's coordinator accepts TCP connections, or a one-line error at timeout."""
    host, _, port = s["coordinator"].rpartition(":")
    deadline = time.monotonic() + s["timeout"]
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2.0):
                return
        except OSError as e:
            if time.monotonic() > deadline:
                raise _join_error(s, f"nothing listens there ({e})") from e
            time.sleep(0.25)


def is_main_process() -> bool:
    """The one process that writes logs, samples, plots and other non-checkpoint files."""
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any of them (a collective: all processes
    must call it at the same point). Free on a single process."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.array([bool(flag)]))))


def put(host, sharding=None) -> jax.Array:
    """A host array (the same on every process) as a global array laid out by `sharding`; each
    process copies only the slices its own devices hold (`jax.make_array_from_callback`), so
    nothing crosses processes and it is safe from a background thread."""
    host = np.asarray(host)
    if sharding is None:
        return jax.device_put(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
