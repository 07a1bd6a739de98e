"""A small framework for experiments: declared parameters, cases run on any Executor, tidy rows.

An experiment declares its parameters (enough to generate a widget or a CLI flag from), and a **case
function** that measures one point of the parameter grid: it does its set-up once, runs ``repeat + 1``
repetitions (repetition 0 is the warm-up) and returns rows — one per observation, units in column names.
:func:`run` expands the grid (a parameter declared ``sweep=True`` may be given a list), sends each case to
an executor (``None``: in this process, with a per-trial progress bar; any ``concurrent.futures.Executor``,
a Dask ``Client.get_executor()`` included, runs cases in parallel, on other machines too — see
:mod:`~labkit.experiments.executors`), adds the parameters, the warm-up flag and the host of the worker that
ran the case as columns (:data:`~labkit.experiments.host.HOST_COLUMNS`), and returns one DataFrame in the
grid's order. A case that raises loses only its own rows: it is listed in ``df.attrs["failed"]`` (case ->
one-line error) and the others are kept; when every case fails, the first case's error is raised.

The registry is filled by the experiment modules themselves (one module per experiment, each importing
this one); ``labkit.experiments`` imports them all, so :func:`get` and :func:`names` know every built-in
once that package is imported — which importing this module already does. This module imports no
experiment.

>>> from labkit.experiments.framework import Param, experiment, run
>>> @experiment("square", title="x squared", params=[Param("x", "int", 2, min=0, max=10, sweep=True)])
... def _square(p, repeat, ctx):
...     return [{"repeat": r, "value": p["x"] ** 2} for r in range(repeat + 1)]
>>> df = run("square", repeat=2, progress=False, x=[1, 3])
>>> sorted(df[~df.warmup].value.unique().tolist())
[1, 9]
>>> from labkit.experiments.framework import REGISTRY; del REGISTRY["square"]   # keep the registry clean
"""
from __future__ import annotations

import concurrent.futures as cf
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .. import errors
from ..config import bench_root
from ..units import parse_size
from .host import HOST_COLUMNS, environment, worker_dir

log = logging.getLogger(__name__)

TYPES = ("int", "float", "str", "bool", "size", "choice")


@dataclass(frozen=True)
class Param:
    """One parameter: ``type`` is int, float, str, bool, size (bytes; accepts "64K") or choice."""

    name: str
    type: str
    default: Any
    help: str = ""
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    sweep: bool = False  # may be given a list: one case per value

    def convert(self, value: Any) -> Any:
        """Check and convert one value given by a user (CLI strings included)."""
        what = f"parameter {self.name}"
        try:
            if self.type == "int":
                v: Any = int(value)
            elif self.type == "float":
                v = float(value)
            elif self.type == "bool":
                v = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
            elif self.type == "size":
                v = parse_size(value, what=what)
            else:
                v = str(value) if self.type == "str" else value
        except (TypeError, ValueError) as e:
            raise errors.InvalidArgument(f"{what}={value!r}", f"is not a {self.type}", fix=self.help or None) from e
        if self.choices is not None and v not in self.choices:
            raise errors.InvalidArgument(f"{what}={value!r}", "is not allowed",
                                         fix=f"choose from {', '.join(map(str, self.choices))}")
        if (self.min is not None and v < self.min) or (self.max is not None and v > self.max):
            raise errors.InvalidArgument(f"{what}={value!r}", f"is outside {self.min}..{self.max}")
        return v


@dataclass
class Context:
    """What a case function gets besides its parameters: a scratch root and a progress callback."""

    root: str
    tick: Callable[[int], None] = field(default=lambda n=1: None)


CaseFn = Callable[[dict[str, Any], int, Context], Iterable[dict[str, Any]]]


@dataclass
class Experiment:
    """A registered experiment (see :func:`experiment`)."""

    name: str
    title: str
    params: list[Param]
    case: CaseFn
    columns: dict[str, str] = field(default_factory=dict)
    trials_per_case: Callable[[dict[str, Any]], int] = field(default=lambda p: 1)
    summary: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    whole_list: tuple[str, ...] = ()

    def summarize(self, df: pd.DataFrame) -> pd.DataFrame:
        """A small table of medians (warm-up dropped) for the shell and the report."""
        if self.summary is not None:
            return self.summary(df)
        return df[~df.warmup].describe()

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise errors.InvalidArgument(f"parameter {name!r} of experiment {self.name!r}", "is unknown",
                                     fix=f"its parameters are {', '.join(p.name for p in self.params)}")

    def describe(self) -> str:
        """One line per parameter, for ``labkit bench --list``."""
        lines = [f"{self.name}: {self.title}"]
        for p in self.params:
            extra = f" choices={','.join(map(str, p.choices))}" if p.choices else ""
            bounded = p.min is not None or p.max is not None
            rng = f" range={'' if p.min is None else p.min}..{'' if p.max is None else p.max}" if bounded else ""
            lines.append(f"  {p.name} ({p.type}{', list' if p.sweep else ''}) default={p.default}{extra}{rng}"
                         f"{': ' + p.help if p.help else ''}")
        return "\n".join(lines)


REGISTRY: dict[str, Experiment] = {}


def experiment(name: str, *, title: str, params: Sequence[Param], columns: dict[str, str] | None = None,
               trials_per_case: Callable[[dict[str, Any]], int] | None = None,
               summary: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
               whole_list: Sequence[str] = ()) -> Callable[[CaseFn], CaseFn]:
    """Register ``fn(params, repeat, ctx) -> rows`` as experiment ``name``. Parameters named in
    ``whole_list`` reach one case as a list instead of making one case per value."""
    def deco(fn: CaseFn) -> CaseFn:
        REGISTRY[name] = Experiment(name, title, list(params), fn, dict(columns or {}),
                                    trials_per_case or (lambda p: 1), summary, tuple(whole_list))
        return fn
    return deco


def get(name: str) -> Experiment:
    """The experiment called ``name``."""
    if name not in REGISTRY:
        raise errors.NotFound(f"experiment {name!r}", fix="list them with `labkit bench --list`")
    return REGISTRY[name]


def names() -> list[str]:
    """Every registered experiment, in the order they were registered."""
    return list(REGISTRY)


def cases(exp: Experiment, params: dict[str, Any]) -> list[dict[str, Any]]:
    """The parameter grid: defaults, overridden by ``params``; lists expand sweep parameters."""
    unknown = set(params) - {p.name for p in exp.params}
    if unknown:
        exp.param(sorted(unknown)[0])  # raises with the list of known ones
    axes = []
    for p in exp.params:
        value = params.get(p.name, p.default)
        if p.name in exp.whole_list:  # the case takes the whole list (e.g. runtimes compared in one run)
            value = (value.split(",") if isinstance(value, str) else
                     list(value) if isinstance(value, (list, tuple)) else [value])
            axes.append([(p.name, [p.convert(v) for v in value])])
            continue
        if isinstance(value, str) and p.sweep and "," in value:
            value = value.split(",")
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if len(values) > 1 and not p.sweep:
            raise errors.InvalidArgument(f"parameter {p.name}", "takes one value", fix="give a single value")
        axes.append([(p.name, p.convert(v)) for v in values])
    return [dict(combo) for combo in itertools.product(*axes)]


def _run_case(fn: CaseFn, case: dict[str, Any], repeat: int, root: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One case on a worker: its rows and the worker's :func:`environment`. The scratch root is the worker's
    own directory under ``root`` (removed after its last case if that left it empty). Module-level so process
    pools and Dask can pickle it; it takes the case function itself (pickled by reference), so a worker needs
    the experiment's module importable, not registered."""
    with worker_dir(root) as scratch:
        return list(fn(case, repeat, Context(scratch))), environment(scratch)


def _label(case: dict[str, Any]) -> str:
    """A case as people read it: ``backend=copy, size=1048576``."""
    return ", ".join(f"{k}={v}" for k, v in case.items())


def _one_line(e: BaseException) -> str:
    """An error as one line (labkit's errors already are one, naming the fix)."""
    if isinstance(e, errors.LabkitError):
        return str(e)
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def run(name: str, *, repeat: int = 3, executor: cf.Executor | None = None, progress: bool = True,
        root: str | None = None, **params: Any) -> pd.DataFrame:
    """Run experiment ``name`` over its parameter grid; returns the tidy DataFrame.

    ``root`` is a scratch directory (default ``$LABKIT_ROOT/bench`` or ``/var/lib/labkit/bench``); on an
    executor each worker works in its own ``<hostname>-<pid>`` directory under it, on its own machine.
    ``df.attrs``: ``environment`` (this process's host), ``workers`` (worker -> its host), ``failed`` (case
    -> one-line error), ``skipped``, ``experiment``, ``params``.
    """
    exp = get(name)
    if repeat < 1:
        raise errors.InvalidArgument(f"repeat={repeat}", "must be at least 1")
    root = bench_root(root)
    grid = cases(exp, params)
    env = environment(root)
    from tqdm.auto import tqdm
    total = sum(exp.trials_per_case(c) for c in grid) * (repeat + 1)
    bar = tqdm(total=total, disable=not progress, unit="trial", desc=name, leave=False)
    done: dict[int, tuple[list[dict[str, Any]], dict[str, Any]]] = {}   # grid index -> rows, worker's host
    failures: dict[int, BaseException] = {}

    def tick(n: int = 1) -> None:
        bar.update(n)

    try:
        if executor is None:
            for i, c in enumerate(grid):
                bar.set_postfix_str(_label(c)[:60])
                ctx = Context(root, tick=tick)
                os.makedirs(root, exist_ok=True)
                try:
                    done[i] = (list(exp.case(c, repeat, ctx)), env)
                except Exception as e:  # reported in df.attrs["failed"]; the other cases go on
                    log.debug("case %s of %s failed", _label(c), name, exc_info=True)
                    failures[i] = e
        else:
            futures = {executor.submit(_run_case, exp.case, c, repeat, root): i for i, c in enumerate(grid)}
            try:
                for fut in cf.as_completed(futures):
                    i = futures[fut]
                    try:
                        done[i] = fut.result()
                    except Exception as e:  # raised on the worker (or the worker was lost)
                        log.debug("case %s of %s failed", _label(grid[i]), name, exc_info=True)
                        failures[i] = e
                    bar.update(exp.trials_per_case(grid[i]) * (repeat + 1))
            except BaseException:   # interrupted: run no more of them
                for fut in futures:
                    fut.cancel()
                raise
    finally:
        bar.close()
    if failures and not done:
        raise failures[min(failures)]
    rows = []
    skipped: dict[str, str] = {}
    workers: dict[str, dict[str, Any]] = {}
    for i in sorted(done):
        case_rows, host_env = done[i]
        workers[host_env["worker"]] = host_env
        host = {k: host_env[k] for k in HOST_COLUMNS if k != "store_fs"}
        for r in case_rows:
            row = {**grid[i], **r}
            row.setdefault("repeat", 0)
            if row["repeat"] < 0:  # a row that records a skip (e.g. a runtime not installed)
                skipped[str(row.get("runtime", row.get("backend", "?")))] = str(row.get("skipped", ""))
                continue
            row["warmup"] = row["repeat"] == 0
            row.update(host)
            row.setdefault("store_fs", host_env["store_fs"])
            rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["experiment"] = name
    df.attrs["params"] = {k: v for k, v in params.items()}
    df.attrs["environment"] = env
    df.attrs["workers"] = workers
    df.attrs["failed"] = {_label(grid[i]): _one_line(e) for i, e in sorted(failures.items())}
    df.attrs["skipped"] = skipped
    return df


def results_dir() -> str:
    """Where results go by default: ``$LABKIT_RESULTS`` or ``data/results`` under the working directory."""
    return os.environ.get("LABKIT_RESULTS") or os.path.join(os.getcwd(), "data", "results")


def save(df: pd.DataFrame, path: str | None = None) -> dict[str, str]:
    """Write the CSV (and Parquet where pyarrow is installed) plus a JSON of the environment, the workers, the
    failed cases and the parameters.

    ``path`` defaults to ``data/results/<experiment>-<UTC time>.csv``. Returns the paths written.
    """
    name = df.attrs.get("experiment", "result")
    if path is None:
        path = os.path.join(results_dir(), f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.csv")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    base = os.path.splitext(path)[0]
    out = {"csv": path}
    df.to_csv(path, index=False)
    try:
        import pyarrow  # noqa: F401
        df.to_parquet(base + ".parquet", index=False)
        out["parquet"] = base + ".parquet"
    except ImportError:
        pass
    meta = {"experiment": name, "params": _jsonable(df.attrs.get("params", {})),
            "environment": df.attrs.get("environment") or environment(), "workers": df.attrs.get("workers", {}),
            "failed": df.attrs.get("failed", {}), "rows": len(df), "columns": list(df.columns)}
    with open(base + ".json", "w") as f:
        json.dump(meta, f, indent=2, default=str)
    out["json"] = base + ".json"
    return out


def load(path: str) -> pd.DataFrame:
    """Read a saved result back, with its JSON in ``df.attrs``."""
    df = pd.read_csv(path)
    meta = os.path.splitext(path)[0] + ".json"
    if os.path.exists(meta):
        with open(meta) as f:
            info = json.load(f)
        df.attrs.update({"experiment": info.get("experiment"), "params": info.get("params", {}),
                         "environment": info.get("environment", {}), "workers": info.get("workers", {}),
                         "failed": info.get("failed", {})})
    return df


def _jsonable(x: Any) -> Any:
    try:
        json.dumps(x)
        return x
    except TypeError:
        return str(x)


__all__ = ["Param", "Context", "Experiment", "experiment", "run", "get", "names", "cases", "save", "load",
           "REGISTRY"]
