"""``ExperimentPanel``: controls generated from an experiment's parameters, a Run button, a progress bar,
and a plot and a table that update as each case finishes. The run happens in a thread, so the kernel
stays responsive; ``panel.results`` is the DataFrame so far.

The thread shows its results by setting widget values — ``panel.plot`` (an ``Image`` with the standard
figure as PNG, drawn with matplotlib's Agg renderer), ``panel.table`` (an ``HTML`` table in human units,
:func:`labkit.experiments.findings.table`) and ``panel.finding`` (the result in a sentence) — never by
printing into an ``Output`` widget, whose capture does not reach the browser from another thread under
ipykernel 7 (the panel said "done" and stayed empty).

>>> from labkit.widgets import ExperimentPanel
>>> panel = ExperimentPanel("space-vs-containers", root="/var/tmp/labkit-bench")   # doctest: +SKIP
>>> panel                                   # shows the controls in a notebook      # doctest: +SKIP
>>> panel.run(wait=True); panel.results.head()                                      # doctest: +SKIP
"""
from __future__ import annotations

import html
import threading
import traceback
from typing import Any

import ipywidgets as w
import pandas as pd

from .. import plots
from ..config import bench_root
from ..experiments import findings, framework
from ..experiments.framework import Param
from ..units import format_size
from ._panel import Panel, error_html, table_html


def _control(p: Param) -> w.Widget:
    desc = p.name.replace("_", " ")
    style = {"description_width": "110px"}
    layout = w.Layout(width="420px")
    if p.type == "choice" and p.sweep:
        default = p.default if isinstance(p.default, (list, tuple)) else [p.default]
        return w.SelectMultiple(options=list(p.choices or ()), value=tuple(default), description=desc,
                                rows=min(6, len(p.choices or ())), style=style, layout=layout, tooltip=p.help)
    if p.type == "choice":
        return w.Dropdown(options=list(p.choices or ()), value=p.default, description=desc, style=style, layout=layout)
    if p.type == "bool":
        return w.Checkbox(value=bool(p.default), description=desc, style=style)
    if p.type == "int" and not p.sweep and p.min is not None and p.max is not None:
        return w.IntSlider(value=int(p.default), min=int(p.min), max=int(p.max), description=desc, style=style,
                           layout=layout)
    if p.type == "int" and not p.sweep:
        return w.BoundedIntText(value=int(p.default), min=int(p.min or 0), max=int(p.max or 10**9),
                                description=desc, style=style, layout=layout)
    value = p.default
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    placeholder = "e.g. 16M,256M,1G" if p.type == "size" else ""
    return w.Text(value=str(value), description=desc, placeholder=placeholder, style=style, layout=layout,
                  tooltip=p.help)


def _value(p: Param, control: w.Widget) -> Any:
    v = control.value
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, str) and p.sweep:
        return [x.strip() for x in v.split(",") if x.strip()]
    return v


class ExperimentPanel(Panel):
    """A panel for experiment ``name``; display it in a notebook, or drive it from code.

    ``root`` is the scratch directory of the runs; ``defaults`` preset the controls. After a run:
    ``results`` (the DataFrame), ``plot.value`` (PNG bytes), ``table.value`` (HTML), ``finding.value``
    (the result in a sentence with its numbers), ``error`` (the traceback of a failed run, or None).
    """

    def __init__(self, name: str, *, root: str | None = None, repeat: int = 3, **defaults: Any) -> None:
        self.experiment = framework.get(name)
        self.root = bench_root(root)
        self.controls: dict[str, w.Widget] = {}
        for p in self.experiment.params:
            c = _control(p)
            if p.name in defaults:
                d = defaults[p.name]
                c.value = (tuple(d) if isinstance(c, w.SelectMultiple) else
                           ",".join(map(str, d)) if isinstance(c, w.Text) and isinstance(d, (list, tuple)) else
                           str(d) if isinstance(c, w.Text) else d)
            self.controls[p.name] = c
        self.repeat = w.IntSlider(value=repeat, min=1, max=20, description="repeat",
                                  style={"description_width": "110px"})
        self.button = w.Button(description="Run", button_style="primary", icon="play")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="idle", style={"description_width": "110px"})
        self.status = w.HTML()
        self.plot = w.Image(format="png", layout=w.Layout(max_width="100%"))
        self.table = w.HTML()
        self.finding = w.HTML()
        self.results = pd.DataFrame()
        self.error: str | None = None
        self._thread: threading.Thread | None = None
        self.button.on_click(lambda _b: self.guard(self.run))
        title = w.HTML(f"<b>{self.experiment.name}</b>: {self.experiment.title}")
        super().__init__([title, *self.controls.values(), self.repeat, w.HBox([self.button, self.progress]),
                          self.status, self.finding,
                          w.Tab(children=[self.plot, self.table], titles=("plot", "table"))])

    def params(self) -> dict[str, Any]:
        """The parameters as the controls say now (checked: a bad value raises InvalidArgument)."""
        params = {p.name: _value(p, self.controls[p.name]) for p in self.experiment.params}
        framework.cases(self.experiment, params)  # validates
        return params

    def run(self, *, wait: bool = False) -> None:
        """Start a run in a thread (the button does this); ``wait=True`` blocks until it ends."""
        if self.running:
            self.status.value = "already running"
            return
        try:
            params = self.params()
        except Exception as e:  # noqa: BLE001 - a bad control value: say so next to the button
            self.status.value = error_html(e)
            return
        self._thread = threading.Thread(target=self._run, args=(params,), daemon=True,
                                        name=f"ExperimentPanel {self.experiment.name}")
        self._thread.start()
        if wait:
            self.wait()

    @property
    def running(self) -> bool:
        """True while a run's thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current run ends (or ``timeout`` seconds); True when no run is left."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def _run(self, params: dict[str, Any]) -> None:
        exp = self.experiment
        grid = framework.cases(exp, params)
        repeat = self.repeat.value
        self.button.disabled = True
        self.progress.max = max(1, len(grid))
        self.progress.value = 0
        self.progress.bar_style = ""
        self.progress.description = "running"
        self.results = pd.DataFrame()
        self.error = None
        self.finding.value = ""
        try:
            for case in grid:
                self.status.value = "running " + ", ".join(f"{k}={_fmt(v)}" for k, v in case.items())
                df = framework.run(exp.name, repeat=repeat, root=self.root, progress=False, **case)
                results = pd.concat([self.results, df], ignore_index=True)
                results.attrs.update(df.attrs)
                results.attrs["experiment"] = exp.name
                self.results = results
                self.progress.value += 1
                self._show()
            self.status.value = f"done: {len(self.results)} rows"
            self.progress.description = "done"
        except Exception as e:  # noqa: BLE001 - shown in the panel; the traceback is kept in .error
            self.error = traceback.format_exc()
            self.status.value = "failed: " + error_html(e)
            self.progress.bar_style = "danger"
            self.progress.description = "failed"
        finally:
            self.button.disabled = False

    def _show(self) -> None:
        """Draw the standard figure and the summary table of the results so far (in the run's thread)."""
        name = self.experiment.name
        self.plot.value = plots.plot(self.results, name).png()
        self.table.value = table_html(findings.table(name, self.results), index=False)
        sentence = findings.sentence_or_none(name, self.results)
        self.finding.value = f"<i>{html.escape(sentence)}</i>" if sentence else ""


def _fmt(v: Any) -> str:
    return format_size(v) if isinstance(v, int) and v >= 4096 else str(v)
