"""Where a sweep's cases run, from a short spec (``labkit bench NAME --executor SPEC``).

========================  ============================================================================
spec                      executor
========================  ============================================================================
(none), ``local``         in this process, one case after another (``None``: :func:`framework.run
                          <labkit.experiments.framework.run>` shows a per-trial progress bar)
``thread[:N]``            a ``ThreadPoolExecutor`` of N threads (default: one per CPU)
``process[:N]``           a ``ProcessPoolExecutor`` of N fresh (``spawn``) processes (default: one per CPU)
``dask[:N]``              a Dask ``LocalCluster`` on this machine: N worker processes (default 2) of one
                          thread each, on loopback, with temporary mutual-TLS credentials, so that
                          other local users cannot send the (root) workers code
``dask:ADDRESS``          a running Dask scheduler, e.g. ``dask:tcp://10.0.0.5:8786`` or
                          ``dask:tls://...`` (credentials from Dask's configuration); its workers run the
                          cases on their machines
========================  ============================================================================

:func:`open_executor` makes the executor and releases it on every path: pools are shut down, a local
cluster's processes end, a client disconnects (a remote scheduler and its workers keep running). On ^C the
sweep's process stops and cancels the cases not begun; worker processes here ignore ^C and finish the case
at hand, which removes its scratch store, before they are ended (a second ^C leaves them: ``labkit gc``).

>>> from labkit.experiments.executors import open_executor, parse_spec
>>> parse_spec("dask:tcp://10.0.0.5:8786")
ExecutorSpec(kind='dask', workers=None, address='tcp://10.0.0.5:8786')
>>> with open_executor("thread:2") as ex:
...     ex.submit(pow, 2, 10).result()
1024
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import logging
import multiprocessing
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .. import errors

log = logging.getLogger(__name__)

__all__ = ["ExecutorSpec", "parse_spec", "open_executor", "MAX_WORKERS", "DASK_WORKERS"]

#: the most workers a local spec may ask for
MAX_WORKERS = 64
#: worker processes of a local Dask cluster when the spec names no number
DASK_WORKERS = 2
#: seconds to wait for a remote scheduler to answer
CONNECT_TIMEOUT = 5.0

_FORMS = "write local, thread[:N], process[:N], dask[:N] or dask:tcp://HOST:PORT"
_ADDRESS = re.compile(r"^(?:(?:tcp|tls|ws|wss|ucx)://)?(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):\d{1,5}$")


@dataclass(frozen=True)
class ExecutorSpec:
    """A parsed ``--executor`` spec: ``kind`` is local, thread, process or dask; ``address`` a scheduler's."""

    kind: str
    workers: int | None = None
    address: str | None = None


def parse_spec(spec: str | None) -> ExecutorSpec:
    """Check and parse an executor spec (see the module's table); raises InvalidArgument in one line.

    >>> parse_spec(None), parse_spec("process:4")
    (ExecutorSpec(kind='local', workers=None, address=None), ExecutorSpec(kind='process', workers=4, address=None))
    """
    text = (spec or "local").strip()
    kind, sep, rest = text.partition(":")
    kind = kind.lower()
    what = f"executor {spec!r}"
    if kind not in ("local", "thread", "process", "dask") or (kind == "local" and sep):
        raise errors.InvalidArgument(what, "is not an executor", fix=_FORMS)
    if not sep or (kind == "dask" and not rest):
        return ExecutorSpec(kind)
    if rest.isdigit():
        n = int(rest)
        if not 1 <= n <= MAX_WORKERS:
            raise errors.InvalidArgument(what, f"asks for {n} workers", fix=f"give 1 to {MAX_WORKERS}" + (
                " (a scheduler is dask:tcp://HOST:PORT)" if kind == "dask" else ""))
        return ExecutorSpec(kind, workers=n)
    if kind == "dask" and _ADDRESS.match(rest):
        return ExecutorSpec(kind, address=rest)
    detail = "is not a number of workers" + (" or a scheduler address" if kind == "dask" else "")
    raise errors.InvalidArgument(what, detail, fix=_FORMS)


@contextlib.contextmanager
def open_executor(spec: str | None, *, connect_timeout: float = CONNECT_TIMEOUT) -> Iterator[cf.Executor | None]:
    """The executor ``spec`` names (``None`` for local), released when the block ends however it ends.

    Errors, each one line: a bad spec (InvalidArgument), Dask not installed (Unsupported, naming
    ``pip install 'labkit[dask]'``), a scheduler that does not answer within ``connect_timeout`` seconds
    (NotFound).
    """
    s = parse_spec(spec)
    if s.kind == "local":
        yield None
        return
    if s.kind in ("thread", "process"):
        n = s.workers or os.cpu_count() or 1
        pool: cf.Executor = (cf.ThreadPoolExecutor(n, thread_name_prefix="labkit-case") if s.kind == "thread" else
                             cf.ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),
                                                    initializer=_ignore_sigint))
        try:
            yield pool
        except KeyboardInterrupt:
            log.warning(_WAITING)
            raise
        finally:   # pending cases are cancelled; running ones end (and clean up) before the pool goes
            pool.shutdown(wait=True, cancel_futures=True)
        return
    with _dask_client(s, connect_timeout) as client:
        yield client.get_executor(pure=False)   # a case given twice is measured twice, never taken from memory


_WAITING = ("interrupted: waiting for the cases already running to end and remove their scratch stores "
            "(^C again to leave them)")


def _ignore_sigint() -> None:
    """In a worker process: a terminal's ^C reaches the whole process group, but only the process that runs the
    sweep should stop; its workers finish the case at hand, which removes its store, and are then ended."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while worker processes are spawned, so that they inherit it (main thread only)."""
    try:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:   # not the main thread: signals are not ours to change
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old if old is not None else signal.default_int_handler)


def _executing(dask_worker: Any) -> int:
    """On a Dask worker: how many tasks its threads are running (cancelled ones included)."""
    return int(dask_worker.state.executing_count)


def _drain(client: Any) -> None:
    """Wait until no worker of the local cluster runs a case (a cancelled case still runs to its end on its
    thread, and a worker killed meanwhile would leave its scratch store, mounts included)."""
    told = False
    while True:
        try:
            running = sum(client.run(_executing).values())
        except Exception:   # noqa: BLE001 - the cluster is already going: nothing to wait for
            return
        if not running:
            return
        if not told:
            log.warning(_WAITING)
            told = True
        time.sleep(0.2)


def _dask() -> Any:
    try:
        import distributed
    except ImportError as e:
        raise errors.Unsupported("executor 'dask'", f"needs dask.distributed, which is not installed ({e.name} is "
                                 "missing)", fix="pip install 'labkit[dask]'") from e
    return distributed


@contextlib.contextmanager
def _dask_client(s: ExecutorSpec, connect_timeout: float) -> Iterator[Any]:
    distributed = _dask()
    with contextlib.ExitStack() as stack:
        if s.address is None:
            try:
                import cryptography  # noqa: F401  (Security.temporary() signs the cluster's TLS credentials)
            except ImportError as e:
                raise errors.Unsupported("executor 'dask'", "a local cluster needs cryptography for its TLS "
                                         "credentials", fix="pip install 'labkit[dask]'") from e
            with _sigint_ignored():   # the workers ignore ^C: the sweep's process stops, drains, then ends them
                cluster = stack.enter_context(distributed.LocalCluster(
                    n_workers=s.workers or DASK_WORKERS, threads_per_worker=1, processes=True, host="127.0.0.1",
                    dashboard_address=None, security=True))
            client = stack.enter_context(distributed.Client(cluster))
            try:
                yield client
            except KeyboardInterrupt:
                _drain(client)   # a second ^C here leaves them to the cluster's close
                raise
            return
        else:
            _probe(distributed, s.address, connect_timeout)
            client = distributed.Client(s.address, timeout=connect_timeout)
            stack.enter_context(client)
        yield client


def _probe(distributed: Any, address: str, timeout: float) -> None:
    """Connect to the scheduler and exchange Dask's handshake within ``timeout`` seconds, or raise in one
    line. (``Client(timeout=...)`` bounds the TCP connect but waits for ever on a peer that accepts and then
    says nothing.) In a thread of its own: a notebook's thread already runs an event loop."""
    async def handshake() -> None:
        args = distributed.Security().get_connection_args("client")
        comm = await asyncio.wait_for(distributed.comm.connect(address, timeout=timeout, **args), timeout)
        await comm.close()

    with cf.ThreadPoolExecutor(1, thread_name_prefix="labkit-dask-probe") as t:
        try:
            t.submit(asyncio.run, handshake()).result()
        except (OSError, TimeoutError) as e:   # refused, unreachable, or silent for ``timeout``
            raise errors.NotFound(f"Dask scheduler {address}", f"did not answer within {timeout:g} s",
                                  fix="start one with `dask scheduler` there, or check the address and that "
                                      "this machine may reach its port") from e
        except Exception as e:   # something else answers there (garbage frames, a TLS mismatch)
            raise errors.FailedPrecondition(f"Dask scheduler {address}", "did not answer as a Dask scheduler "
                                            f"({type(e).__name__})", fix="check the address, and for tls:// the "
                                            "credentials in Dask's configuration") from e
