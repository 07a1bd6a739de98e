"""Every notebook runs headless with small parameters (a Japanese level runs the English level's code, so only
its code is compared, and the Japanese report runs); each ends with 'check your work'
asserts on the values it measured (thin flat, copy growing, space per container...), so a wrong number fails
here — and each leaves nothing behind: no mount, no loop device, no scratch directory.

The Japanese editions (notebooks/ja/) have the same code as the English ones (comments aside) and prose of
their own; the report renders a failed experiment as a labelled error and the rest as usual; a level re-runs
after its kernel was killed half-way, once `labkit gc --root` has released what the dead kernel held.
"""
from __future__ import annotations

import ast
import io
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tokenize

import pytest

papermill = pytest.importorskip("papermill", reason="make test installs papermill")

REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
EDITIONS = {"en": NOTEBOOKS, "ja": NOTEBOOKS / "ja"}

SMALL = {
    "00-tour.ipynb": {"repeat": 1},
    "01-what-a-container-is.ipynb": {},
    "02-images-as-snapshots.ipynb": {"image_mib": 4, "write_mib": 1, "containers": 2},
    "03-install-and-commit.ipynb": {"backend": "overlay"},
    "04-thin-provisioning.ipynb": {"sizes": ["4M", "64M"], "repeat": 2, "containers": 3, "write": "1M"},
    "05-backends-compared.ipynb": {"size": "16M", "repeat": 1},
    "06-container-use-cases.ipynb": {},
    "07-image-sprawl.ipynb": {"steps": 3},
    # the kernel's side of level 08 runs in tests/vm's one VM boot (test_space_lesson, test_kernel_diff): a
    # second boot here cost ~80 s of the suite's 15 minutes (LABKIT_TEST_EVERY_EDITION=1 boots it here too)
    "08-model-and-kernel.ipynb": {"containers": 2, "image": "4M", "write": "1M", "ops": 30, "seeds": 1,
                                  "use_vm": False},
    "09-minimal-image.ipynb": {"apps": ["hello"], "repeat": 1},
    "10-recipes.ipynb": {"repeat": 1},
    "report.ipynb": {"quick": True},
}
#: per edition, on top of SMALL: with LABKIT_TEST_EVERY_EDITION=1 the English level 08 boots the kernel's VM
EDITION_SMALL = ({("en", "08-model-and-kernel.ipynb"): {"use_vm": True}}
                 if os.environ.get("LABKIT_TEST_EVERY_EDITION") == "1" else {})
JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


def notebooks() -> list[str]:
    """Every notebook of both editions, as 'en/NAME' and 'ja/NAME'."""
    return sorted(f"{lang}/{p.name}" for lang, d in EDITIONS.items() for p in d.glob("*.ipynb"))


def _path(ident: str) -> pathlib.Path:
    lang, name = ident.split("/")
    return EDITIONS[lang] / name


def _cells(path: pathlib.Path, kind: str) -> list[dict]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return [c for c in nb["cells"] if c["cell_type"] == kind]


def _code_tokens(src: str) -> list[tuple[int, str]]:
    """A code cell's tokens without comments and layout: what runs."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING}
    return [(t.type, t.string) for t in tokenize.generate_tokens(io.StringIO(src).readline) if t.type not in skip]


# ---- structure (quick, no root) ----------------------------------------------------------------------------

def test_every_notebook_has_small_parameters():
    names = {i.split("/")[1] for i in notebooks()}
    assert names == set(SMALL), names ^ set(SMALL)


def test_every_level_has_a_japanese_edition():
    en = {p.name for p in NOTEBOOKS.glob("*.ipynb")}
    ja = {p.name for p in (NOTEBOOKS / "ja").glob("*.ipynb")}
    assert en == ja, sorted(en ^ ja)


@pytest.mark.parametrize("name", sorted(p.name for p in (NOTEBOOKS / "ja").glob("*.ipynb")))
def test_japanese_edition_runs_the_same_code(name):
    """Same code cells as the English level (comments may be translated); prose of its own, in Japanese."""
    en, ja = NOTEBOOKS / name, NOTEBOOKS / "ja" / name
    en_code, ja_code = _cells(en, "code"), _cells(ja, "code")
    assert len(en_code) == len(ja_code), name
    for a, b in zip(en_code, ja_code):
        sa, sb = "".join(a["source"]), "".join(b["source"])
        if "parameters" in a.get("metadata", {}).get("tags", []):
            sb = sb.replace('lang = "ja"', 'lang = "en"')     # the report's language is its one parameter of its own
        assert _code_tokens(sa) == _code_tokens(sb), f"{name}: code differs from the English level:\n{sb}"
    prose = _cells(ja, "markdown")
    assert len(prose) == len(_cells(en, "markdown"))
    assert all(JAPANESE.search("".join(c["source"])) for c in prose), f"{name}: a markdown cell is not in Japanese"


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_english_edition_is_in_english(name):
    assert not any(JAPANESE.search("".join(c["source"])) for c in _cells(NOTEBOOKS / name, "markdown")), name


@pytest.mark.parametrize("ident", notebooks())
def test_parameters_parse_without_warnings(ident):
    """papermill reads every assignment of the parameters cell (a comment it cannot parse used to drop
    `quick` with 'Unable to parse line 7 ... Passed unknown parameter: quick')."""
    path = _path(ident)
    cell = next(c for c in _cells(path, "code") if "parameters" in c.get("metadata", {}).get("tags", []))
    assigned = [n.targets[0].id for n in ast.parse("".join(cell["source"])).body if isinstance(n, ast.Assign)]
    assert list(papermill.inspect_notebook(str(path))) == assigned
    for name in SMALL.get(path.name, {}):
        assert name in assigned, f"{ident}: the test's parameter {name} is not in its parameters cell"


@pytest.mark.parametrize("ident", notebooks())
def test_notebook_uses_the_public_api(ident):
    """Levels are written against Lab and the snapshot contract, not a store's or a backend's insides, and
    each has its papermill parameters cell."""
    path = _path(ident)
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"]), ident
    for needle in ("lab.store", "lab.sn.", "lab.runtime", ".client"):
        assert not any(needle in src for src in code), f"{ident} uses {needle}"
    private = [m.group(0) for src in code for m in re.finditer(r"\._[a-z]\w*", src)]
    assert not private, f"{ident} uses private names {private}"
    if any("Lab(" in src for src in code):      # re-runs after a killed kernel start from a clean store
        assert any("lab.reset()" in src for src in code), ident
        assert "lab.close()" in code[-1], f"{ident}: its last cell should close the Lab (clean up)"


# ---- execution (root) --------------------------------------------------------------------------------------

def release(root: str) -> None:
    """What a failed notebook left for its stores: gc the root when it is a Lab store, and every scratch store
    under it (an experiment's bench/<backend>-*/store)."""
    from labkit import errors
    from labkit.gc import gc
    for path in [root, *sorted(str(p) for p in pathlib.Path(root).glob("**/store") if p.is_dir())]:
        try:
            gc(path, force=True)
        except errors.InvalidArgument:      # not a store: nothing of labkit's to release there
            pass


def assert_nothing_left(root: pathlib.Path) -> None:
    """No mount, loop device or scratch directory of the notebook's: its clean-up did its job."""
    from labkit._sys import loop, mounts
    real = os.path.realpath(root)
    mounted = [m.target for m in mounts.mountinfo() if m.target.startswith(real + "/") or m.target == real]
    assert not mounted, mounted
    loops = [lp.backing_file for lp in loop.list_loops() if (lp.backing_file or "").startswith(real + "/")]
    assert not loops, loops
    if not root.exists():
        return
    stray = [str(p) for p in root.rglob("*") if re.match(r"(rootfs|mnt|view|tour|overlay|thin|copy|btrfs|reflink)-",
                                                           p.name) and p.parent.name in (root.name, "bench", "tmp")]
    assert not stray, stray
    assert not (root / "bench").exists(), sorted(os.listdir(root / "bench"))
    assert not (root / "mnt").exists()
    if (root / "rootfs").exists():
        assert not os.listdir(root / "rootfs"), os.listdir(root / "rootfs")


def execute(path: pathlib.Path, out: pathlib.Path, params: dict) -> None:
    try:
        papermill.execute_notebook(str(path), str(out), parameters=params, cwd=str(REPO), kernel_name="python3",
                                   progress_bar=False, log_output=False)
    except BaseException:
        # a failed cell stops the notebook before its clean-up cell: release what its store still holds
        # (mounts, loop devices, a pool daemon), so that one failure is not reported twice by the hygiene check
        release(params["root"])
        raise


def _outputs(path: pathlib.Path) -> list[dict]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]


def executed() -> list[str]:
    """The notebooks the suite executes: every English level, and of the Japanese edition only what runs
    code of its own (the report, whose `lang` parameter makes its tables and figures Japanese). A Japanese
    level runs token for token the English level's code (test_japanese_edition_runs_the_same_code), so its
    run would repeat the English one's minutes for nothing; LABKIT_TEST_EVERY_EDITION=1 runs them all."""
    if os.environ.get("LABKIT_TEST_EVERY_EDITION") == "1":
        return notebooks()
    return [i for i in notebooks() if i.startswith("en/") or i == "ja/report.ipynb"]


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("ident", executed())
def test_notebook_runs_and_checks_its_values(ident, tmp_path):
    path = _path(ident)
    params = {"root": str(tmp_path / "store"), **SMALL.get(path.name, {}),
              **EDITION_SMALL.get((ident.split("/")[0], path.name), {})}
    if path.name == "report.ipynb":
        params["results"] = str(tmp_path / "results")
    execute(path, tmp_path / path.name, params)
    assert_nothing_left(tmp_path / "store")
    outputs = _outputs(tmp_path / path.name)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    nb = json.loads((tmp_path / path.name).read_text(encoding="utf-8"))
    for cell in (c for c in nb["cells"] if c["cell_type"] == "code"):       # a figure is shown once
        images = [o for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        assert len(images) <= 1, "".join(cell["source"])
    if path.name == "report.ipynb":
        check_report(tmp_path / "results", outputs, lang=ident.split("/")[0])


def check_report(results: pathlib.Path, outputs: list[dict], *, lang: str) -> None:
    """Every experiment measured and written, each figure shown once, tables in human units."""
    headline = json.loads((results / "headline.json").read_text(encoding="utf-8"))
    assert len(headline) == 10 and all("finding" in v for v in headline.values()), headline
    assert len(list(results.glob("*.csv"))) == 10
    html = "\n".join("".join(o["data"]["text/html"]) for o in outputs if "text/html" in o.get("data", {}))
    assert not [o for o in outputs if "image/png" in o.get("data", {})]     # figures are <img> with alt text
    assert len(re.findall(r"<img alt='[^']+' src='data:image/png", html)) == 10, "one figure per experiment, once"
    assert "lk-error" not in html.replace(".lk-report .lk-error", "")
    assert not re.search(r">\s*-?\d+\.\d{4,}\s*<", html), "a raw float in a table"
    assert not re.search(r">\s*\d{7,}(\.0)?\s*<", html), "raw bytes in a table"
    assert "<th" in html and "index" not in html
    if lang == "ja":
        assert "わかったこと" in html and "付録" in html
    else:
        assert "Findings" in html and "Appendix: environment" in html


@pytest.mark.root
@pytest.mark.slow
def test_report_shows_a_failed_experiment_and_renders_the_rest(tmp_path):
    """One failing experiment (an invalid block size injected through `overrides`) is a labelled error in its
    section and on the first page; the other experiment, the contents and the appendix render as usual."""
    params = {"root": str(tmp_path / "store"), "results": str(tmp_path / "results"), "quick": True,
              "only": ["block-size", "start-latency"], "overrides": {"block-size": {"block_size": ["3K"]}}}
    out = tmp_path / "report.ipynb"
    execute(NOTEBOOKS / "report.ipynb", out, params)
    subprocess.run([sys.executable, "-m", "nbconvert", "--to", "html", "--no-input", "--log-level", "WARN",
                    str(out), "--output", "report.html"], check=True, capture_output=True)
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "This experiment failed: block-size failed" in html
    assert "must be 64 KiB..1 GiB in steps of 64 KiB" in html           # the error, with its fix
    assert "not measured: it failed" in html                           # on the first page
    assert html.count("<img") == 1 and "Container start latency" in html
    assert "Appendix: environment" in html and "start-latency-" in html
    headline = json.loads((tmp_path / "results" / "headline.json").read_text(encoding="utf-8"))
    assert set(headline) == {"block-size", "start-latency"} and "error" in headline["block-size"]
    assert_nothing_left(tmp_path / "store")


@pytest.mark.root
@pytest.mark.slow
def test_a_level_reruns_after_its_kernel_was_killed(tmp_path):
    """Notebook 02 killed (SIGKILL to its kernel) after it committed an image and started containers on a thin
    pool; `labkit gc --root` releases what the dead kernel held; the whole notebook then runs again."""
    import nbclient
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    from labkit._sys import mounts
    root = tmp_path / "store"
    params = {"root": str(root), **SMALL["02-images-as-snapshots.ipynb"]}
    nb = parameterize_notebook(load_notebook_node(str(NOTEBOOKS / "02-images-as-snapshots.ipynb")), params)
    stop = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "BlockMap(sn" in c.source)
    client = nbclient.NotebookClient(nb, kernel_name="python3", resources={"metadata": {"path": str(REPO)}})
    try:
        with client.setup_kernel():
            for i, cell in enumerate(nb.cells[: stop + 1]):
                client.execute_cell(cell, i)
            assert mounts.mounts_under(str(root)), "the pool's FUSE export should be mounted mid-way"
            kernel = client.km.provisioner.process          # the kernel's Popen
            kernel.send_signal(signal.SIGKILL)               # it dies with the store open
            assert kernel.wait(timeout=30) == -signal.SIGKILL
    except RuntimeError:     # nbclient complains that the dead kernel does not answer its shutdown
        pass
    labkit_cli = os.path.join(os.path.dirname(sys.executable), "labkit")
    gc = subprocess.run([labkit_cli, "gc", "--root", str(root)], capture_output=True, text=True, cwd=REPO)
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert not mounts.mounts_under(str(root)), gc.stdout
    execute(NOTEBOOKS / "02-images-as-snapshots.ipynb", tmp_path / "rerun.ipynb", params)
    assert any("ok" in "".join(o.get("text", "")) for o in _outputs(tmp_path / "rerun.ipynb"))
    assert_nothing_left(root)
