"""``ImageBrowser`` and ``ContainerPanel``: a Lab's images and containers as notebook panels.

>>> from labkit import Lab
>>> from labkit.widgets import ImageBrowser, ContainerPanel
>>> lab = Lab()                                   # doctest: +SKIP
>>> ImageBrowser(lab)                             # lineage tree; select an image to inspect/run/tag/remove   # doctest: +SKIP
>>> ContainerPanel(lab)                           # running containers, usage, logs, stop/commit            # doctest: +SKIP
"""
from __future__ import annotations

import json
import shlex
from typing import Any

import ipywidgets as w


def _err(e: Exception) -> str:
    return f"<span style='color:#b00'>{e}</span>"


class ImageBrowser(w.VBox):
    """The lineage tree with sizes; pick an image to inspect it, run a command in it, tag or remove it."""

    def __init__(self, lab: Any) -> None:
        self.lab = lab
        self.tree = w.HTML()
        self.select = w.Dropdown(description="image", style={"description_width": "60px"})
        self.details = w.Output()
        self.cmd = w.Text(value="ls /", description="command", style={"description_width": "60px"})
        self.tag_text = w.Text(placeholder="name:tag", description="tag as", style={"description_width": "60px"})
        self.status = w.HTML()
        buttons = []
        for label, fn in (("Inspect", self.inspect), ("Run", self.run), ("Tag", self.tag), ("Remove", self.remove),
                          ("Refresh", self.refresh)):
            b = w.Button(description=label)
            b.on_click(lambda _, f=fn: self._guard(f))
            buttons.append(b)
        self.select.observe(lambda ch: self._guard(self.inspect), names="value")
        super().__init__([self.tree, self.select, w.HBox([self.cmd, self.tag_text]), w.HBox(buttons),
                          self.status, self.details])
        self.refresh()

    def _guard(self, fn: Any) -> None:
        try:
            fn()
        except Exception as e:  # a refused rmi, an unknown tag: say it next to the buttons
            self.status.value = _err(e)

    def refresh(self) -> None:
        """Redraw the tree and the choices."""
        self.tree.value = "<pre>" + (self.lab.tree() or "(no images)") + "</pre>"
        df = self.lab.images()
        options = [(f"{r.id} {', '.join(r.tags) or '<none>'}", r.id) for r in df.itertuples()] if len(df) else []
        keep = self.select.value
        self.select.options = options
        ids = [v for _, v in options]
        self.select.value = keep if keep in ids else (ids[0] if ids else None)

    def inspect(self) -> dict[str, Any] | None:
        if not self.select.value:
            return None
        info = self.lab.store.inspect(self.select.value)
        self.details.clear_output()
        with self.details:
            print(json.dumps({k: info[k] for k in ("short_id", "tags", "parent", "created_by", "size", "exclusive",
                                                   "children", "containers") if k in info}, indent=2, default=str))
        return info

    def run(self) -> str:
        if not self.select.value:
            raise ValueError("choose an image first")
        c = self.lab.run(self.select.value, shlex.split(self.cmd.value), rm=True)
        self.details.clear_output()
        with self.details:
            print(c.output)
        self.status.value = f"exit code {c.exit_code}"
        return c.output

    def tag(self) -> None:
        self.lab.store.tag(self.select.value, self.tag_text.value)
        self.refresh()
        self.status.value = f"tagged {self.tag_text.value}"

    def remove(self) -> None:
        self.lab.store.rmi(self.select.value)
        self.refresh()
        self.status.value = "removed"


class ContainerPanel(w.VBox):
    """Containers with their resource use; select one for its logs; stop or commit it."""

    def __init__(self, lab: Any) -> None:
        self.lab = lab
        self.table = w.Output()
        self.select = w.Dropdown(description="container", style={"description_width": "70px"})
        self.tag_text = w.Text(placeholder="name:tag", description="commit as", style={"description_width": "70px"})
        self.logs = w.Output()
        self.status = w.HTML()
        buttons = []
        for label, fn in (("Logs", self.show_logs), ("Stop", self.stop), ("Commit", self.commit),
                          ("Refresh", self.refresh)):
            b = w.Button(description=label)
            b.on_click(lambda _, f=fn: self._guard(f))
            buttons.append(b)
        super().__init__([self.table, self.select, self.tag_text, w.HBox(buttons), self.status, self.logs])
        self.refresh()

    _guard = ImageBrowser._guard

    def refresh(self) -> Any:
        """Redraw the table (status and cgroup usage of running containers)."""
        from IPython.display import display
        df = self.lab.ps()
        rows = []
        for r in df.to_dict("records") if len(df) else []:
            stats = {}
            if r.get("status") == "running":
                try:
                    stats = self.lab.runtime.get(r["name"]).stats()
                except Exception:  # it just ended
                    pass
            rows.append({"name": r["name"], "status": r.get("status"), "command": r.get("command"),
                         "memory_bytes": stats.get("memory_bytes"), "cpu_usage_ns": stats.get("cpu_usage_ns"),
                         "pids": stats.get("pids")})
        import pandas as pd
        table = pd.DataFrame(rows)
        self.table.clear_output()
        with self.table:
            display(table if len(table) else "(no containers)")
        keep = self.select.value
        self.select.options = [r["name"] for r in rows]
        if keep in self.select.options:
            self.select.value = keep
        return table

    def show_logs(self) -> str:
        out = self.lab.container(self.select.value).output
        self.logs.clear_output()
        with self.logs:
            print(out)
        return out

    def stop(self) -> None:
        self.lab.container(self.select.value).stop(timeout=5)
        self.refresh()

    def commit(self) -> str:
        iid = self.lab.commit(self.select.value, self.tag_text.value or None)
        self.status.value = f"committed {iid[:12]}"
        return iid
