"""``ImageBrowser`` and ``ContainerPanel``: a Lab's images and containers as notebook panels.

Both use only :class:`labkit.Lab`'s public methods. Every button's error — a refused ``rmi``, an unknown
tag, a Lab that was closed — is written into the panel's status line.

>>> from labkit import Lab
>>> from labkit.widgets import ImageBrowser, ContainerPanel
>>> lab = Lab()                      # doctest: +SKIP
>>> ImageBrowser(lab)                # lineage tree; select an image to inspect/run/tag/remove   # doctest: +SKIP
>>> ContainerPanel(lab)              # running containers, usage, logs, stop/commit            # doctest: +SKIP
"""
from __future__ import annotations

import re
import shlex
from typing import Any

import ipywidgets as w
import pandas as pd

from .. import errors
from ..lab import Lab
from ..plots import human
from ..units import format_size
from ._panel import Panel, pre, table_html

__all__ = ["ImageBrowser", "ContainerPanel"]

_LABEL = {"description_width": "70px"}


def human_tree(text: str) -> str:
    """:meth:`Lab.tree`'s text with its byte counts in binary units (``size=1985622`` -> ``size=1.9 MiB``)."""
    return re.sub(r"\b(size|exclusive)=(\d+)\b", lambda m: f"{m[1]}={format_size(int(m[2]))}", text or "")


def image_facts(info: dict[str, Any]) -> pd.DataFrame:
    """What a reader needs of :meth:`Lab.inspect`: ids cut to 12 characters, sizes in binary units."""
    def short(v: Any) -> str:
        return ", ".join(str(x)[:12] for x in v) if isinstance(v, (list, tuple)) else (str(v)[:12] if v else "–")
    rows = [("id", info.get("short_id") or str(info.get("id", ""))[:12]),
            ("tags", ", ".join(info.get("tags") or ()) or "<none>"), ("parent", short(info.get("parent"))),
            ("created by", info.get("created_by") or "–"),
            ("size", format_size(info["size"]) if info.get("size") is not None else "–"),
            ("exclusive", format_size(info.get("exclusive") or 0)),
            ("children", short(info.get("children") or ()) or "–"),
            ("containers", ", ".join(info.get("containers") or ()) or "–")]
    return pd.DataFrame(rows, columns=["", "value"])


class ImageBrowser(Panel):
    """The lineage tree with sizes; pick an image to inspect it, run a command in it, tag or remove it."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.tree = w.HTML()
        self.select = w.Dropdown(description="image", style=_LABEL)
        self.details = w.HTML()
        self.cmd = w.Text(value="ls /", description="command", style=_LABEL)
        self.tag_text = w.Text(placeholder="name:tag", description="tag as", style=_LABEL)
        self.status = w.HTML()
        buttons = [self.make_button(label, fn) for label, fn in (
            ("Inspect", self.inspect), ("Run", self.run), ("Tag", self.tag), ("Remove", self.remove),
            ("Refresh", self.refresh))]
        self.select.observe(lambda _ch: self.guard(self.inspect), names="value")
        super().__init__([self.tree, self.select, w.HBox([self.cmd, self.tag_text]), w.HBox(buttons),
                          self.status, self.details])
        self.refresh()

    def refresh(self) -> None:
        """Redraw the tree (sizes in binary units) and the choices."""
        self.tree.value = pre(human_tree(self.lab.tree()) or "(no images)")
        df = self.lab.images()
        options = [(f"{r.get('short_id', r['id'][:12])} {', '.join(r['tags']) or '<none>'}", r["id"])
                   for r in df.to_dict("records")] if len(df) else []
        keep = self.select.value
        self.select.options = options
        ids = [v for _, v in options]
        self.select.value = keep if keep in ids else (ids[0] if ids else None)

    def _selected(self) -> str:
        if not self.select.value:
            raise errors.FailedPrecondition("image browser", "has no image selected", fix="choose one in the list")
        return self.select.value

    def inspect(self) -> dict[str, Any] | None:
        """Show (and return) what :meth:`Lab.inspect` says of the selected image."""
        if not self.select.value:
            return None
        info = self.lab.inspect(self.select.value)
        self.details.value = table_html(image_facts(info), index=False)
        return info

    def run(self) -> str:
        """Run the command in a throw-away container of the selected image; returns its output."""
        c = self.lab.run(self._selected(), shlex.split(self.cmd.value), rm=True)
        self.details.value = pre(c.output)
        self.status.value = f"exit code {c.exit_code}"
        return c.output

    def tag(self) -> None:
        """Tag the selected image with the text of ``tag as``."""
        self.lab.tag(self._selected(), self.tag_text.value)
        self.refresh()
        self.status.value = f"tagged {self.tag_text.value}"

    def remove(self) -> pd.DataFrame:
        """``rmi`` the selected image (refused while something uses it: the status line says what)."""
        removed = self.lab.rmi(self._selected())
        self.refresh()
        self.details.value = table_html(human(removed), index=False)
        self.status.value = "removed"
        return removed


class ContainerPanel(Panel):
    """Containers with their resource use (memory, CPU time, processes: the container's cgroup, in human
    units); select one for its logs; stop or commit it. :meth:`refresh` returns the raw numbers."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.table = w.HTML()
        self.select = w.Dropdown(description="container", style=_LABEL)
        self.tag_text = w.Text(placeholder="name:tag", description="commit as", style=_LABEL)
        self.logs = w.HTML()
        self.status = w.HTML()
        buttons = [self.make_button(label, fn) for label, fn in (
            ("Logs", self.show_logs), ("Stop", self.stop), ("Commit", self.commit), ("Refresh", self.refresh))]
        super().__init__([self.table, self.select, self.tag_text, w.HBox(buttons), self.status, self.logs])
        self.refresh()

    def refresh(self) -> pd.DataFrame:
        """Redraw the table (status and cgroup usage of running containers); returns it."""
        df = self.lab.ps()
        rows = []
        for r in df.to_dict("records") if len(df) else []:
            stats: dict[str, Any] = {}
            if r.get("status") == "running":
                try:
                    rc = self.lab.container(r["name"]).runtime
                    stats = rc.stats() if rc is not None else {}
                except (errors.LabkitError, OSError):  # it just ended
                    pass
            rows.append({"name": r["name"], "status": r.get("status"), "command": r.get("command"),
                         "memory_bytes": stats.get("memory_bytes"), "cpu_usage_ns": stats.get("cpu_usage_ns"),
                         "pids": stats.get("pids")})
        table = pd.DataFrame(rows, columns=["name", "status", "command", "memory_bytes", "cpu_usage_ns", "pids"])
        shown = human(table).rename(columns={"memory_bytes": "memory", "cpu_usage_ns": "CPU time"})
        self.table.value = table_html(shown, empty="(no containers)", index=False)
        keep = self.select.value
        self.select.options = [r["name"] for r in rows]
        if self.select.options:               # keep the choice; else the first container, ready for Logs
            self.select.value = keep if keep in self.select.options else self.select.options[0]
        return table

    def _selected(self) -> str:
        if not self.select.value:
            raise errors.FailedPrecondition("container panel", "has no container selected",
                                            fix="choose one in the list")
        return self.select.value

    def show_logs(self) -> str:
        """Show (and return) the selected container's output."""
        out = self.lab.container(self._selected()).output
        self.logs.value = pre(out)
        return out

    def stop(self) -> None:
        """Stop the selected container (SIGTERM, SIGKILL after 5 s)."""
        self.lab.container(self._selected()).stop(timeout=5)
        self.refresh()
        self.status.value = f"stopped {self.select.value}"

    def commit(self) -> str:
        """Commit the selected container as a new image (tagged with ``commit as`` if given)."""
        iid = self.lab.commit(self._selected(), self.tag_text.value or None)
        self.status.value = f"committed {iid[:12]}"
        return iid
