"""The measurement report's building blocks (``notebooks/report.ipynb``, rendered by ``make report``).

:func:`attempt` runs one experiment and saves its CSV, catching its failure so that the report shows it as a
labelled error and goes on; the other functions turn the outcomes into what a reader sees, in English or
Japanese: a first page of findings in sentences with their numbers (:func:`title_page`), a contents list,
one section per experiment — what it measures, its figure (once), a small table in human units, the
conclusion (:func:`section`) — and the environment appendix (:func:`appendix`).

>>> o = Outcome("block-size", {"writes": 1}, error="InvalidArgument: block size 3 KiB: ...")
>>> "block-size" in title_page({"block-size": o}, {"kernel": "6.1"}, quick=True) and not o.ok
True
"""
from __future__ import annotations

import base64
import html
import os
import re
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import matplotlib
import numpy
import pandas as pd

from .. import errors, plots
from . import findings, framework

__all__ = ["Outcome", "HTML", "attempt", "title_page", "contents", "section", "figure_html", "appendix", "headline"]

TEXT: dict[str, dict[str, str]] = {
    "en": {"findings": "Findings", "contents": "Contents", "appendix": "Appendix: environment",
           "host": "Measured on", "quick": "Quick mode: small images and few repetitions. Every effect shows; "
           "the numbers are rough — run <code>make report</code> without it for the real ones.",
           "failed": "failed", "not_measured": "not measured: it failed (see its section)",
           "measures": "What it measures", "conclusion": "Conclusion", "error": "This experiment failed",
           "partial": "Some cases of this experiment failed; the figure and the table show the others",
           "traceback": "traceback", "skipped": "not run: not in <code>only</code>", "param": "parameters",
           "seconds": "run time", "file": "result file", "backend": "backend", "available": "runs here",
           "reason": "why not", "experiment": "experiment", "fact": "what", "value": "value",
           "machine": "The machine", "backends": "Snapshot backends", "runs": "The runs",
           "median_note": "Medians over the repetitions (the warm-up run is dropped); figures show the 25–75 % "
                          "spread."},
    "ja": {"findings": "わかったこと", "contents": "目次", "appendix": "付録：測定環境",
           "host": "測定したマシン", "quick": "クイックモード：小さなイメージと少ない繰り返しで測っています。効果は"
           "すべて現れますが、数値は目安です。正式な値は <code>make report</code> をそのまま実行してください。",
           "failed": "失敗", "not_measured": "測定できませんでした（その節を参照）",
           "measures": "何を測るか", "conclusion": "結論", "error": "この実験は失敗しました",
           "partial": "この実験の一部のケースが失敗しました。図と表は残りのケースの結果です",
           "traceback": "トレースバック", "skipped": "実行せず（<code>only</code> に含まれない）", "param": "パラメータ",
           "seconds": "所要時間", "file": "結果ファイル", "backend": "バックエンド", "available": "このマシンで動くか",
           "reason": "動かない理由", "experiment": "実験", "fact": "項目", "value": "値",
           "machine": "マシン", "backends": "スナップショットのバックエンド", "runs": "実行した実験",
           "median_note": "値は繰り返しの中央値です（最初のウォームアップは除く）。図には 25–75 % の幅を示します。"},
}

STYLE = """<style>
.lk-report table.lk-table { border-collapse: collapse; margin: 0.5em 0 1em 0; font-size: 0.9em; }
.lk-report table.lk-table th, .lk-report table.lk-table td { padding: 3px 12px; border-bottom: 1px solid #ddd; }
.lk-report .lk-error { border-left: 4px solid #b00; background: #fff4f4; padding: 0.5em 1em; margin: 0.5em 0; }
.lk-report .lk-finding { margin: 0.3em 0; }
</style>"""


class HTML(str):
    """A string that Jupyter shows as HTML (``display(HTML(...))`` without importing IPython here)."""

    def _repr_html_(self) -> str:
        return str(self)


@dataclass
class Outcome:
    """One experiment of the report: its parameters and either its DataFrame or its error."""

    name: str
    params: dict[str, Any]
    df: pd.DataFrame | None = None
    error: str | None = None          # one line: what failed and the fix
    traceback: str | None = None
    csv: str | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.df is not None and len(self.df) > 0

    @property
    def data(self) -> pd.DataFrame:
        """The DataFrame of an outcome that is :attr:`ok`."""
        if self.df is None:
            raise ValueError(f"experiment {self.name} has no results: {self.error}")
        return self.df


def attempt(name: str, *, root: str, results: str, repeat: int = 3, **params: Any) -> Outcome:
    """Run experiment ``name`` and save its CSV + JSON under ``results``; an exception becomes the outcome's
    ``error`` (labkit errors say their fix) instead of stopping the report."""
    out = Outcome(name, {"repeat": repeat, **params})
    t0 = time.perf_counter()
    try:
        df = framework.run(name, repeat=repeat, root=root, progress=False, **params)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        out.csv = framework.save(df, os.path.join(results, f"{name}-{stamp}.csv"))["csv"]
        out.df = df
        if not len(df):
            out.error = f"{name}: the run returned no rows"
    except Exception as e:  # noqa: BLE001 - shown in the report as this experiment's error; the others go on
        out.error = str(e) if isinstance(e, errors.LabkitError) else f"{type(e).__name__}: {e}"
        out.traceback = traceback.format_exc()
    out.seconds = time.perf_counter() - t0
    return out


def _t(lang: str) -> dict[str, str]:
    return TEXT.get(lang, TEXT["en"])


def _anchor(name: str) -> str:
    return "sec-" + name


def _host_line(env: dict[str, Any], lang: str) -> str:
    bits = [f"Linux {env.get('kernel', '?')}", f"{env.get('cpus', '?')} CPU ({env.get('cpu_model', '?')})",
            f"store on {env.get('store_fs', '?')}" if lang == "en" else f"ストアは {env.get('store_fs', '?')}",
            f"labkit {env.get('labkit_version', '?')}", str(env.get("time", ""))]
    return f"<p><b>{_t(lang)['host']}</b>: " + html.escape(", ".join(b for b in bits if b)) + "</p>"


def title_page(outcomes: dict[str, Outcome], env: dict[str, Any], *, quick: bool = False, lang: str = "en") -> HTML:
    """The first page: where it was measured and one finding per experiment, each a sentence with numbers."""
    t = _t(lang)
    items = []
    for name, o in outcomes.items():
        head = f"<a href='#{_anchor(name)}'>{html.escape(findings.title(name, lang))}</a>"
        if o.ok:
            body = html.escape(findings.finding(name, o.data, lang))
        else:
            body = f"<span style='color:#b00'>{t['not_measured']}</span>"
        items.append(f"<li class='lk-finding'><b>{head}</b> — {body}</li>")
    quick_note = f"<p><i>{t['quick']}</i></p>" if quick else ""
    return HTML(f"{STYLE}<div class='lk-report'><h2 id='findings'>{t['findings']}</h2>{_host_line(env, lang)}"
                f"{quick_note}<ul>{''.join(items)}</ul><p><small>{t['median_note']}</small></p></div>")


def contents(outcomes: dict[str, Outcome], lang: str = "en") -> HTML:
    """A numbered list of the sections (failed ones marked), then the appendix."""
    t = _t(lang)
    failed = f" — <span style='color:#b00'>{t['failed']}</span>"
    items = [f"<li><a href='#{_anchor(n)}'>{html.escape(findings.title(n, lang))}</a>{'' if o.ok else failed}</li>"
             for n, o in outcomes.items()]
    items.append(f"<li><a href='#appendix'>{t['appendix']}</a></li>")
    return HTML(f"<div class='lk-report'><h2 id='contents'>{t['contents']}</h2><ol>{''.join(items)}</ol></div>")


_NUMERIC = re.compile(r"^(–|[-+]?\d[\d.,]*\s?(%|×|倍|[a-zA-Zµ]+(/s)?)?)$")


def _table(df: pd.DataFrame) -> str:
    """A table without its index; columns of numbers (with their units) right-aligned, text left-aligned."""
    right = {c for c in df.columns if len(df) and df[c].map(lambda v: bool(_NUMERIC.match(str(v)))).all()}
    head = "".join(f"<th style='text-align:{'right' if c in right else 'left'}'>{html.escape(str(c))}</th>"
                   for c in df.columns)
    rows = "".join("<tr>" + "".join(f"<td style='text-align:{'right' if c in right else 'left'}'>"
                                    f"{html.escape(str(v))}</td>" for c, v in zip(df.columns, r)) + "</tr>"
                   for r in df.itertuples(index=False))
    return f"<table class='lk-table'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def figure_html(fig: plots.LabFigure) -> HTML:
    """A figure as an ``<img>`` with its alt text (nbconvert's image/png template drops the alt)."""
    data = base64.b64encode(fig.png()).decode("ascii")
    return HTML(f"<img alt='{html.escape(fig.alt(), quote=True)}' src='data:image/png;base64,{data}' "
                "style='max-width:100%'>")


def section(outcome: Outcome, number: int, lang: str = "en") -> list[HTML]:
    """What one experiment's section shows, in order: heading and what it measures, the figure (once), the
    table and the conclusion — or the labelled error."""
    t, name = _t(lang), outcome.name
    head = HTML(f"<div class='lk-report'><h2 id='{_anchor(name)}'>{number}. {html.escape(findings.title(name, lang))}"
                f" <small><code>{html.escape(name)}</code></small></h2>"
                f"<p>{html.escape(findings.about(name, lang))}</p></div>")
    if not outcome.ok:
        tb = (f"<details><summary>{t['traceback']}</summary><pre>{html.escape(outcome.traceback)}</pre></details>"
              if outcome.traceback else "")
        return [head, HTML(f"<div class='lk-report'><div class='lk-error'><b>⚠ {t['error']}: "
                           f"{html.escape(name)} {t['failed']}</b><br><code>{html.escape(outcome.error or '')}</code>"
                           f"{tb}</div></div>")]
    parts: list[Any] = [head]
    failed = outcome.data.attrs.get("failed") or {}
    if failed:          # the run kept the other cases' rows (framework.run): say which ones are missing, and why
        items = "".join(f"<li><code>{html.escape(str(c))}</code>: {html.escape(str(e))}</li>" for c, e in failed.items())
        parts.append(HTML(f"<div class='lk-report'><div class='lk-error'><b>⚠ {t['partial']}</b><ul>{items}</ul>"
                          "</div></div>"))
    try:
        parts.append(figure_html(plots.plot(outcome.data, name)))
    except Exception as e:  # noqa: BLE001 - a figure that cannot be drawn is said, the table still shows
        what = html.escape(f"{type(e).__name__}: {e}")
        parts.append(HTML(f"<div class='lk-report lk-error'>figure: {what}</div>"))
    conclusion = html.escape(findings.conclusion(name, outcome.data, lang))
    parts.append(HTML(f"<div class='lk-report'>{_table(findings.table(name, outcome.data))}"
                      f"<p><b>{t['conclusion']}</b>: {conclusion}</p></div>"))
    return parts


def appendix(outcomes: dict[str, Outcome], env: dict[str, Any], status: pd.DataFrame | None = None,
             lang: str = "en") -> HTML:
    """The machine, the backends that run here (and why the others do not), each run's parameters and files."""
    t = _t(lang)
    machine = pd.DataFrame([(k, str(v)) for k, v in {
        "kernel": env.get("kernel"), "CPU": f"{env.get('cpus')} × {env.get('cpu_model')}",
        "store filesystem": env.get("store_fs"), "Python": env.get("python"), "labkit": env.get("labkit_version"),
        "pandas / numpy / matplotlib": f"{pd.__version__} / {numpy.__version__} / {matplotlib.__version__}",
        "time": env.get("time")}.items()], columns=[t["fact"], t["value"]])
    parts = [f"<h3>{t['machine']}</h3>{_table(machine)}"]
    if status is not None and len(status):
        s = pd.DataFrame({t["backend"]: status["name"],
                          t["available"]: status["available"].map({True: "✓", False: "—"}),
                          t["reason"]: status["reason"].fillna("")})
        parts.append(f"<h3>{t['backends']}</h3>{_table(s)}")
    runs = pd.DataFrame([{t["experiment"]: n,
                          t["param"]: ", ".join(f"{k}={_short(v)}" for k, v in o.params.items()),
                          t["seconds"]: plots.format_seconds(o.seconds),
                          t["file"]: os.path.basename(o.csv) if o.csv else (t["failed"] if o.error else "")}
                         for n, o in outcomes.items()])
    parts.append(f"<h3>{t['runs']}</h3>{_table(runs)}")
    return HTML(f"<div class='lk-report'><h2 id='appendix'>{t['appendix']}</h2>{''.join(parts)}</div>")


def _short(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(map(str, v)) + "]"
    return str(v)


def headline(outcomes: dict[str, Outcome], lang: str = "en") -> dict[str, Any]:
    """The findings as data (``headline.json``): per experiment its sentence, or its error."""
    return {n: ({"finding": findings.finding(n, o.data, lang), "csv": o.csv} if o.ok else {"error": o.error})
            for n, o in outcomes.items()}
