"""The panels as people meet them: notebooks opened in JupyterLab in a real (headless) chromium, run cell by
cell with Shift+Enter, buttons clicked. Asserts that the widget views exist and that their outputs change:
BlockMap's Refresh shows the blocks a container just wrote, ExperimentPanel's Run redraws its plot and table
for the values typed into its controls, ImageBrowser's Remove says why it is refused, ContainerPanel lists a
running container with its cgroup's numbers — and that a panel whose Lab was closed says so.

The notebooks are small copies of levels 02, 04, 06 and 07 with tiny parameters, in a temp dir, their stores
in temp dirs too; whatever happens, every store is released with ``labkit.gc.gc(root, force=True)``.
``LABKIT_SCREENSHOTS=docs/img`` also writes a screenshot of each panel there (the README shows them).
"""
from __future__ import annotations

import os
import pathlib
import re
import shutil

import nbformat
import pytest
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from labkit import errors
from labkit.gc import gc

PlaywrightTimeout = pytest.importorskip("playwright.sync_api",
                                        reason="pip install playwright (the test extra)").TimeoutError

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[2] / "notebooks"
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"          # the notebook in front
CELLS = f"{PANEL} .jp-Notebook .jp-Cell"

pytestmark = [pytest.mark.root, pytest.mark.slow]


def small_copy(name: str, dest: pathlib.Path, params: dict, *, keep: tuple[str, ...] = ()) -> pathlib.Path:
    """Level ``name`` with ``params`` injected (as papermill does); with ``keep``, only its parameters, its first
    code cell and the cells that mention one of ``keep`` (plus the last: the clean-up)."""
    nb = load_notebook_node(str(NOTEBOOKS / name))      # (papermill's reader: every cell gets its tags list)
    if keep:
        code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        params_cell = next(i for i in code if "parameters" in nb.cells[i].metadata.get("tags", []))
        chosen = {params_cell, code[code.index(params_cell) + 1], code[-1]}
        chosen |= {i for i in code if any(k in nb.cells[i].source for k in keep)}
        nb.cells = [c for i, c in enumerate(nb.cells) if i in chosen or i == 0]
    nb = parameterize_notebook(nb, params)
    path = dest / name
    nbformat.write(nb, path)
    return path


def release(*roots: pathlib.Path) -> None:
    for root in roots:
        for path in [root, *sorted(root.glob("**/store"))] if root.exists() else []:
            try:
                gc(str(path), force=True)
            except errors.InvalidArgument:
                pass


class Notebook:
    """An open notebook in the page: run its cells one by one, find their outputs."""

    def __init__(self, page, server, name: str) -> None:
        self.page = page
        self.source = [c.source for c in nbformat.read(os.path.join(server.notebooks, name), as_version=4).cells]
        page.goto(server.page(name))
        page.wait_for_function(f"document.querySelectorAll('{CELLS}').length === {len(self.source)}", timeout=90_000)
        self.wait_idle(timeout=120_000)          # the kernel has started and is connected: cells can run
        self.cells = page.locator(CELLS)
        self.next = 0

    def index_of(self, text: str) -> int:
        """The first cell whose source contains ``text`` (the page shows the file's cells in its order)."""
        for i, src in enumerate(self.source):
            if text in src:
                return i
        raise AssertionError(f"no cell contains {text!r}")

    def wait_idle(self, timeout: float = 60_000) -> None:
        """Until the status bar says the kernel is idle (``Python 3 (ipykernel) | Idle``)."""
        self.page.wait_for_function(
            "() => /\\| Idle/.test(document.querySelector('#jp-main-statusbar')?.textContent || '')", timeout=timeout)

    def run_to(self, last: int, *, timeout: float = 240_000) -> None:
        """Shift+Enter on cells ``self.next .. last``, each awaited (its prompt gets a number). A press the page
        took before the kernel was ready (the prompt stays ``[ ]``) is repeated, as a student would."""
        for i in range(self.next, last + 1):
            cell = self.cells.nth(i)
            code = "jp-CodeCell" in (cell.get_attribute("class") or "")
            prompt = cell.locator(".jp-InputPrompt").first
            for attempt in range(3):
                cell.locator(".jp-InputArea-prompt, .jp-InputPrompt").first.click()
                self.page.keyboard.press("Escape")
                self.page.keyboard.press("Shift+Enter")
                if not code:
                    break
                try:
                    self.page.wait_for_function("el => /\\[(\\*|\\d+)\\]/.test(el.textContent)",
                                                arg=prompt.element_handle(), timeout=15_000)
                    break
                except PlaywrightTimeout:       # the press came before the kernel was ready: press again
                    if attempt == 2:
                        raise
                    self.wait_idle()
            if code:
                self.page.wait_for_function(
                    "el => /\\[\\d+\\]/.test(el.textContent)", arg=prompt.element_handle(), timeout=timeout)
                trace = cell.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']")
                assert trace.count() == 0, f"cell {i} failed:\n{trace.first.inner_text()}"
        self.next = last + 1

    def run_all(self) -> None:
        self.run_to(self.cells.count() - 1)

    def output(self, i: int):
        return self.cells.nth(i).locator(".jp-OutputArea")


def shot(element, name: str, tmp_path: pathlib.Path) -> None:
    """A screenshot of ``element`` in the temp dir, and in $LABKIT_SCREENSHOTS when set."""
    path = tmp_path / name
    element.screenshot(path=str(path))
    target = os.environ.get("LABKIT_SCREENSHOTS")
    if target:
        os.makedirs(target, exist_ok=True)
        shutil.copy(path, os.path.join(target, name))


def img_src(box) -> str:
    """The src of the first image in ``box`` (a blob: URL for a widget's Image), once it has loaded."""
    img = box.locator("img").first
    img.wait_for()
    img.page.wait_for_function("el => el.complete && el.naturalWidth > 100", arg=img.element_handle())
    return img.get_attribute("src") or ""


def test_panels_in_jupyterlab(browser_env):
    server, context, tmp = browser_env
    nbdir = pathlib.Path(server.notebooks)
    stores = {n: tmp / f"store-{n}" for n in ("02", "04", "06", "07")}
    small_copy("02-images-as-snapshots.ipynb", nbdir, {"root": str(stores["02"]), "image_mib": 4, "write_mib": 1,
                                                        "containers": 2})
    small_copy("04-thin-provisioning.ipynb", nbdir, {"root": str(stores["04"])}, keep=("ExperimentPanel(",))
    small_copy("06-container-use-cases.ipynb", nbdir, {"root": str(stores["06"])})
    small_copy("07-image-sprawl.ipynb", nbdir, {"root": str(stores["07"]), "steps": 2})
    try:
        for scenario in (block_map, experiment_panel, container_panel, image_browser):
            page = context.new_page()                  # one page per notebook, as a student opens one
            try:
                scenario(page, server, tmp)
            except BaseException:
                page.screenshot(path=str(tmp / "failure.png"), full_page=True)   # what the page showed
                raise
            finally:
                page.close()
    finally:
        release(*stores.values(), tmp / "labkit-root")


def block_map(page, server, tmp) -> None:
    """02: the map of c0 before and after it writes — Refresh shows c0's own blocks; after the clean-up the
    same button says the store is closed."""
    nb = Notebook(page, server, "02-images-as-snapshots.ipynb")
    at = nb.index_of("bm = BlockMap(")
    nb.run_to(at)
    view = nb.output(at).locator(".widget-vbox").first
    view.wait_for()
    status = view.locator(".widget-html").first
    before, src_before = status.inner_text(), img_src(view)
    assert "exclusive: 0" in before and src_before, before
    nb.run_to(nb.index_of("f.write(os.urandom(write_mib"))           # c0 writes
    view.locator("button", has_text="Refresh").click()
    page.wait_for_function("([el, old]) => el.textContent !== old", arg=[status.element_handle(), before])
    after = status.inner_text()
    exclusive = int(re.search(r"exclusive: (\d+)", after).group(1))
    assert exclusive >= 16 and img_src(view) != src_before, after    # 1 MiB of 64 KiB blocks, redrawn
    shot(view, "blockmap.png", tmp)
    nb.run_all()                                                      # the checks print ok, then the clean-up
    assert "ok" in nb.output(nb.index_of("print(\"ok\")")).inner_text()
    view.locator("button", has_text="Refresh").click()
    page.wait_for_function("el => /closed/.test(el.textContent)", arg=status.element_handle())


def experiment_panel(page, server, tmp) -> None:
    """04 (its block-size panel): the panel ran once; new block sizes typed in, Run — plot and table redrawn."""
    nb = Notebook(page, server, "04-thin-provisioning.ipynb")
    at = nb.index_of("ExperimentPanel(")
    nb.run_to(at)
    panel = nb.output(at).locator(".widget-vbox").first
    panel.wait_for()
    table = panel.locator("table")
    page.locator(".lm-TabBar-tab", has_text="table").first.click()
    assert table.locator("tbody tr").count() == 3
    page.locator(".lm-TabBar-tab", has_text="plot").first.click()
    src_before = img_src(panel)
    field = panel.locator(".widget-text", has_text="block size").locator("input")
    field.fill("64K,128K,256K,512K")
    field.press("Enter")
    panel.locator("button", has_text="Run").click()
    page.wait_for_function("el => /done: 8 rows/.test(el.textContent)", arg=panel.element_handle(), timeout=180_000)
    assert img_src(panel) != src_before
    assert "KiB blocks" in panel.inner_text()                        # the finding, in a sentence
    shot(panel, "experiment-panel.png", tmp)
    page.locator(".lm-TabBar-tab", has_text="table").first.click()
    rows = table.locator("tbody tr")
    assert rows.count() == 4 and "512 KiB" in table.inner_text()
    assert not re.search(r"\d\.\d{4,}", table.inner_text())          # human units, no raw floats
    nb.run_all()


def container_panel(page, server, tmp) -> None:
    """06: the web server listed with its memory, CPU time and processes; Logs shows its output."""
    nb = Notebook(page, server, "06-container-use-cases.ipynb")
    at = nb.index_of("panel = ContainerPanel(")
    nb.run_to(at)
    panel = nb.output(at).locator(".widget-vbox").first
    panel.wait_for()
    table = panel.locator("table")
    assert "web" in table.inner_text() and "running" in table.inner_text()
    assert re.search(r"\d+(\.\d+)? (KiB|MiB)", table.inner_text()), table.inner_text()
    panel.locator("button", has_text="Logs").click()                  # the select holds web, the only one
    shot(panel, "container-panel.png", tmp)
    nb.run_all()
    page.wait_for_function("el => /no containers/.test(el.textContent)", arg=panel.element_handle())


def image_browser(page, server, tmp) -> None:
    """07: the lineage tree; busybox selected and Remove clicked — the status line says why it is refused."""
    nb = Notebook(page, server, "07-image-sprawl.ipynb")
    at = nb.index_of("browser = ImageBrowser(")
    nb.run_to(at)
    panel = nb.output(at).locator(".widget-vbox").first
    panel.wait_for()
    assert "app:latest" in panel.inner_text()
    select = panel.locator("select").first
    select.select_option(label=select.locator("option", has_text="busybox").first.inner_text().strip())
    panel.locator("button", has_text="Remove").click()
    page.wait_for_function("el => /used by/.test(el.textContent)", arg=panel.element_handle())
    shot(panel, "image-browser.png", tmp)
    nb.run_all()
