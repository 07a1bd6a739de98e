"""How the CLI prints: tables with headers, sizes and times for people, JSON for scripts, progress on a TTY.

Nothing here imports pandas: a table is a list of dicts and a list of columns, so ``labkit ps`` stays fast.

>>> human_size(1985622), human_size(0), human_size(999), human_size(1_500_000_000)
('2.0 MB', '0 B', '999 B', '1.5 GB')
>>> human_ago(1000.0, now=1000.0 + 125), human_ago(1000.0, now=1000.0 + 2 * 86400)
('2 minutes ago', '2 days ago')
>>> print(table([{"id": "abc", "size": 5}], [("ID", "id"), ("SIZE", "size")]))
ID   SIZE
abc  5
"""
from __future__ import annotations

import itertools
import json
import os
import re
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from typing import TextIO

__all__ = ["human_size", "human_ago", "human_time", "table", "print_table", "print_json", "cli_words",
           "Spinner", "short_id"]


def human_size(n: Any) -> str:
    """Bytes in decimal units as Docker prints them (``1.9 MB``); exact values come with ``--bytes``."""
    if n is None or n == "":
        return "-"
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _ts(value: Any) -> float | None:
    """Seconds since the epoch from a float, an int of nanoseconds, an ISO string or a datetime."""
    import datetime as _dt  # only listings print times: `labkit run` does without
    if value is None or value == "":
        return None
    if isinstance(value, _dt.datetime):
        return value.timestamp()
    if hasattr(value, "timestamp"):          # a pandas Timestamp, without importing pandas
        return float(value.timestamp())
    if isinstance(value, (int, float)):
        v = float(value)
        return v / 1e9 if v > 1e14 else v / 1e3 if v > 1e11 else v
    try:
        return _dt.datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def human_ago(value: Any, *, now: float | None = None) -> str:
    """``2 minutes ago`` from a timestamp (seconds, nanoseconds, ISO text or datetime)."""
    t = _ts(value)
    if t is None:
        return "-"
    d = max(0.0, (time.time() if now is None else now) - t)
    for size, unit in ((86400 * 365, "year"), (86400 * 30, "month"), (86400 * 7, "week"), (86400, "day"),
                       (3600, "hour"), (60, "minute"), (1, "second")):
        if d >= size:
            k = int(d // size)
            return f"{k} {unit}{'s' if k > 1 else ''} ago"
    return "just now"


def human_time(value: Any) -> str:
    """An exact local time, ``2026-11-28 19:07:19`` (for ``--no-trunc``)."""
    import datetime as _dt
    t = _ts(value)
    return "-" if t is None else _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def short_id(value: Any, *, no_trunc: bool = False) -> str:
    """An id cut to 12 characters like Docker's, unless ``no_trunc``."""
    s = "" if value is None else str(value)
    return s if no_trunc else s[:12]


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return str(v)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]],
          formats: dict[str, Callable[[Any], str]] | None = None) -> str:
    """Rows as an aligned table with a header line: ``columns`` are (HEADER, key) pairs."""
    formats = formats or {}
    cells = [[h for h, _ in columns]]
    for r in rows:
        cells.append([formats[k](r.get(k)) if k in formats else _cell(r.get(k)) for _, k in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(len(columns))).rstrip() for c in cells)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], *,
                formats: dict[str, Callable[[Any], str]] | None = None, out: TextIO | None = None) -> None:
    """Print :func:`table` (a header alone when there are no rows, as Docker does)."""
    print(table(rows, columns, formats), file=out or sys.stdout)


def _default(o: Any) -> Any:
    if hasattr(o, "isoformat"):
        return o.isoformat()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def print_json(value: Any, *, out: TextIO | None = None) -> None:
    """Print ``value`` as JSON (one document; lists stay lists)."""
    print(json.dumps(value, indent=2, default=_default, ensure_ascii=False), file=out or sys.stdout)


#: the library's fix hints name Python calls; at the shell the CLI names its own commands
_CLI_WORDS = [
    (r"list images with images\(\)(?: or import one)?",
     "list images with `labkit images` or import one with `labkit image import busybox`"),
    (r"images\(\)", "`labkit images`"),
    (r"list snapshots with walk\(\)", "list images with `labkit images` and containers with `labkit ps -a`"),
    (r"list them with Runtime\.ps\(\)", "list them with `labkit ps -a`"),
    (r"Runtime\.ps\(\)", "`labkit ps -a`"),
    (r"rmi\(force=True\)", "`labkit image rm -f`"),
    (r"prune\(\)", "`labkit image prune`"),
    (r"remove\(force=True\)", "`labkit rm -f`"),
    (r"commit\(name, '?[^)]*'?\)", "`labkit commit`"),
    (r"leave its `with` block", "stop the container first (`labkit stop`)"),
]


def cli_words(message: str) -> str:
    """An error message with Python hints turned into CLI commands.

    >>> cli_words("image 'x' not found: list images with images() or import one")
    "image 'x' not found: list images with `labkit images` or import one with `labkit image import busybox`"
    """
    for pat, repl in _CLI_WORDS:
        message = re.sub(pat, repl, message)
    return message


class Spinner:
    """Feedback on long work: a spinner with elapsed seconds on a terminal, one line at start and end otherwise.

    >>> with Spinner("importing busybox", out=open(os.devnull, "w")):
    ...     pass
    """

    def __init__(self, what: str, *, out: TextIO | None = None) -> None:
        self.what = what
        self.out = out or sys.stderr
        self.tty = hasattr(self.out, "isatty") and self.out.isatty()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0
        self.note = ""

    def _spin(self) -> None:
        for ch in itertools.cycle("|/-\\"):
            if self._stop.wait(0.1):
                break
            extra = f" {self.note}" if self.note else ""
            self.out.write(f"\r{ch} {self.what}{extra} ({time.monotonic() - self._start:.0f} s)\x1b[K")
            self.out.flush()

    def __enter__(self) -> Spinner:
        self._start = time.monotonic()
        if self.tty:
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()
        else:
            print(f"{self.what} ...", file=self.out, flush=True)
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.out.write("\r\x1b[K")
        took = time.monotonic() - self._start
        status = "done" if exc_type is None else "failed"
        print(f"{self.what}: {status} in {took:.1f} s", file=self.out, flush=True)


def lines(text: str) -> Iterator[str]:
    """Non-empty lines of ``text`` (env files)."""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            yield line


def read_env_file(path: str) -> dict[str, str]:
    """``--env-file``: ``KEY=VALUE`` lines (``#`` comments, blank lines skipped; a bare ``KEY`` takes the
    caller's value, as Docker does)."""
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in lines(f.read()):
            k, sep, v = line.partition("=")
            if not sep:
                if k in os.environ:
                    out[k] = os.environ[k]
                continue
            out[k.strip()] = v
    return out
