"""What every labkit panel shares: a visible status line, and callbacks whose errors land in it.

A button's callback runs in the kernel's comm handler (or a widget's own thread): an exception raised there
goes to the kernel log, which nobody reads. :meth:`Panel.guard` catches it and writes it, with the fix the
error names, into the panel's status line — e.g. "image store at ...: is closed: open a new ImageStore"
after the Lab behind the panel was closed.

Output is shown by setting widget values (``HTML``, ``Image``) rather than ``with output:``: a value set
from any thread reaches the browser, while an ``Output`` widget captures only what its own cell's thread
prints (ipykernel 7 keeps the parent message per thread).

>>> import ipywidgets as w
>>> p = Panel(); p.guard(lambda: 1 / 0)
>>> "ZeroDivisionError" in p.status.value
True
"""
from __future__ import annotations

import html
import logging
from collections.abc import Callable
from typing import Any

import ipywidgets as w
import pandas as pd

from .. import errors

log = logging.getLogger(__name__)

__all__ = ["Panel", "error_html", "pre", "table_html"]


def error_html(e: BaseException) -> str:
    """An error as one red line: labkit errors carry their fix; others say their type."""
    text = str(e) if isinstance(e, errors.LabkitError) else f"{type(e).__name__}: {e}"
    return f"<span style='color:#b00'>{html.escape(text)}</span>"


def pre(text: str) -> str:
    """Text as an escaped ``<pre>`` block for an HTML widget."""
    return "<pre style='margin:0'>" + html.escape(text) + "</pre>"


def table_html(df: pd.DataFrame | Any, *, empty: str = "(nothing)", index: bool = True) -> str:
    """A DataFrame (or Series) as an HTML table for an HTML widget (``index=False``: without its index)."""
    if isinstance(df, pd.Series):
        df = df.to_frame()
    if df is None or not len(df):
        return f"<i>{html.escape(empty)}</i>"
    return TABLE_STYLE + df.to_html(float_format=lambda x: f"{x:.4g}", border=0, index=index, classes="lk-table")


#: tables in an HTML widget are outside JupyterLab's rendered-HTML styles: give them padding and rules
TABLE_STYLE = ("<style>table.lk-table{border-collapse:collapse;margin:2px 0}"
               "table.lk-table th,table.lk-table td{padding:2px 10px;border-bottom:1px solid #ddd;text-align:left}"
               "table.lk-table td{font-variant-numeric:tabular-nums}</style>")


class Panel(w.VBox):
    """A VBox with a ``status`` line; :meth:`guard` runs a callback and shows its error there."""

    def __init__(self, children: Any = (), **kw: Any) -> None:
        if not hasattr(self, "status"):
            self.status = w.HTML()
        super().__init__(children, **kw)

    def guard(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn``; on an error, say it in the status line (and the log) and return None."""
        try:
            return fn()
        except Exception as e:  # a refused rmi, a closed Lab, a snapshot that went away
            log.warning("%s: %s", type(self).__name__, e, exc_info=True)
            self.status.value = error_html(e)
            return None

    def make_button(self, label: str, fn: Callable[[], Any], **kw: Any) -> w.Button:
        """A button whose click runs ``fn`` through :meth:`guard`."""
        b = w.Button(description=label, **kw)
        b.on_click(lambda _b: self.guard(fn))
        return b
