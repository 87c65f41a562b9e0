"""Run the independent jobs of a sweep: in this process, in worker processes, or on Ray.

A sweep is ``results[i] = fn(context, jobs[i])``: one context (the model, the evaluation
function) shared by every job, and small jobs. The context goes to each worker once (the
pool's initializer, or Ray's object store), jobs go one by one, and results come back in
job order, whoever ran them; ``fn`` is deterministic (seeded, one onnxruntime thread), so
the results are the same to the digit. Scheduling is left to the standard library's
:class:`concurrent.futures.ProcessPoolExecutor` and to Ray: nothing here decides which
worker runs what.
"""

from __future__ import annotations

import multiprocessing
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from onnx_dc import progress
from onnx_dc.errors import ArgumentError

LOCAL = "local"
# scripts/setup_env.sh installs the source checkout into .venv in editable mode
RAY_INSTALL = ("in the source checkout .venv/bin/pip install -e '.[ray]' "
               "(an installed package: pip install 'onnx_dc[ray]')")
# A local Ray instance sized for a small machine (a 2-core CI runner): few CPUs, a small object store.
LOCAL_RAY_CPUS = 2
LOCAL_RAY_STORE_BYTES = 100 * 2**20
ADDRESS_TIMEOUT_S = 3.0
PROBE_TIMEOUT_S = 10.0
# Connecting to an address that is not a Ray cluster makes ray.init retry for 20-40 s and write a
# line per retry on stderr (from its C++ core); a child process tries instead, silenced and cut short.
_PROBE = ("import sys, ray; ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False, "
          "logging_level='ERROR'); ray.shutdown()")


@dataclass(frozen=True)
class Runner:
    """Where a sweep runs: ``workers`` processes (0: this process), or Ray (``ray``: ``local`` or an address)."""

    workers: int = 0
    ray: str | None = None

    def describe(self) -> str:
        """A few words for tables and logs."""
        if self.ray is not None:
            return "ray (local instance)" if self.ray == LOCAL else f"ray at {self.ray}"
        return f"{self.workers} worker processes" if self.workers else "serial"


def run_jobs(fn: Callable[[Any, Any], Any], context: Any, jobs: Sequence[Any], runner: Runner = Runner(),
             desc: str = "sweep") -> list:
    """``[fn(context, job) for job in jobs]``, run as ``runner`` says; results in job order.

    ``fn`` must be a module-level function and ``context`` and the jobs picklable (they
    travel to other processes).
    """
    if runner.ray is not None:
        return _run_ray(fn, context, jobs, runner.ray, desc)
    if runner.workers:
        return _run_pool(fn, context, jobs, runner.workers, desc)
    return [fn(context, job) for job in progress.bar(jobs, desc=desc, unit="job")]


_worker_state: tuple[Callable, Any] | None = None


def _init_worker(fn: Callable, context: Any) -> None:
    global _worker_state
    _worker_state = (fn, context)


def _call_in_worker(job: Any) -> Any:
    fn, context = _worker_state
    return fn(context, job)


def _run_pool(fn: Callable, context: Any, jobs: Sequence[Any], workers: int, desc: str) -> list:
    # spawn, not fork: the parent already holds onnxruntime thread pools, which do not survive a fork.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(fn, context)) as pool:
        return list(progress.bar(pool.map(_call_in_worker, jobs), total=len(jobs), desc=desc, unit="job"))


def ray_module():
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ArgumentError(f"--ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    return ray


def check_ray_address(address: str) -> None:
    """Refuse, within seconds, an address where no Ray cluster answers (``local`` is always fine)."""
    if address == LOCAL:
        return
    if address != "auto":
        _check_port(address)
    try:
        subprocess.run([sys.executable, "-c", _PROBE, address], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=PROBE_TIMEOUT_S, check=True)
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError):
        raise ArgumentError(f"--ray {address}: no Ray cluster accepted a connection there within "
                            f"{PROBE_TIMEOUT_S:g} s; check the address (ray status on the head node), or give "
                            "--ray without an address for a local instance") from None


def _check_port(address: str) -> None:
    """Something listens at the address's host and port (a quick refusal for typos and dead hosts)."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ArgumentError(f"--ray {address}: give HOST:PORT (the head node's GCS port, e.g. 10.0.0.5:6379, "
                            "or ray://HOST:10001), or no address for a local instance")
    try:
        with socket.create_connection((host, int(port)), timeout=ADDRESS_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ArgumentError(f"--ray {address}: no Ray cluster answers there within {ADDRESS_TIMEOUT_S:g} s "
                            f"({exc.strerror or type(exc).__name__}); start one (ray start --head) or give "
                            "--ray without an address for a local instance") from None


def _ray_call(fn: Callable, context: Any, job: Any) -> Any:
    return fn(context, job)


def _run_ray(fn: Callable, context: Any, jobs: Sequence[Any], address: str, desc: str) -> list:
    ray = ray_module()  # the CLI checked the address already (check_ray_address), before any work
    started = not ray.is_initialized()
    if started:
        _init_ray(ray, address)
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(_ray_call)
        ctx_ref = ray.put(context)  # once in the object store, not once per job
        refs = [remote.remote(fn, ctx_ref, job) for job in jobs]
        bar = progress.bar(total=len(refs), desc=desc, unit="job")
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=min(len(pending), 8), timeout=1.0)
            bar.update(len(done))
        bar.close()
        return ray.get(refs)
    finally:
        if started:
            ray.shutdown()


def _init_ray(ray, address: str) -> None:
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        if address == LOCAL:
            ray.init(num_cpus=LOCAL_RAY_CPUS, object_store_memory=LOCAL_RAY_STORE_BYTES, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArgumentError(f"--ray {address}: cannot connect ({first}); give --ray without an address for a "
                            "local instance") from None
