"""Every notebook runs headless with small parameters; each ends with 'check your work' asserts on the
values it measured (thin flat, copy growing, space per container...), so a wrong number fails here."""
from __future__ import annotations

import pathlib

import pytest

papermill = pytest.importorskip("papermill", reason="make test installs papermill")

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"

SMALL = {
    "00-tour.ipynb": {"repeat": 1},
    "01-what-a-container-is.ipynb": {},
    "06-container-use-cases.ipynb": {},
    "07-image-sprawl.ipynb": {"steps": 3},
    "03-install-and-commit.ipynb": {"backend": "overlay"},
    "02-images-as-snapshots.ipynb": {"image_mib": 4, "write_mib": 1, "containers": 2},
    "04-thin-provisioning.ipynb": {"sizes": ["4M", "64M"], "repeat": 2, "containers": 3, "write": "1M"},
    "05-backends-compared.ipynb": {"size": "16M", "repeat": 1},
    "report.ipynb": {"quick": True},
}


def notebooks():
    return sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


def test_every_notebook_has_small_parameters():
    assert set(notebooks()) <= set(SMALL), set(notebooks()) - set(SMALL)


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("name", notebooks())
def test_notebook_runs_and_checks_its_values(name, tmp_path):
    params = {"root": str(tmp_path / "store"), **SMALL.get(name, {})}
    if name == "report.ipynb":
        params["results"] = str(tmp_path / "results")
    try:
        papermill.execute_notebook(str(NOTEBOOKS / name), str(tmp_path / name), parameters=params,
                                   cwd=str(NOTEBOOKS.parent), kernel_name="python3", progress_bar=False,
                                   log_output=False)
    except BaseException:
        # a failed cell stops the notebook before its clean-up cell: release what its store still holds
        # (mounts, loop devices, a pool daemon), so that one failure is not reported twice by the hygiene check
        from labkit.gc import gc
        gc(params["root"], force=True)
        raise
    if name == "report.ipynb":
        assert (tmp_path / "results" / "headline.json").exists()
        assert len(list((tmp_path / "results").glob("*.csv"))) >= 6


@pytest.mark.parametrize("name", notebooks())
def test_notebook_uses_the_public_api(name):
    """Levels are written against Lab and the snapshot contract, not a store's or a backend's insides, and
    each has its papermill parameters cell."""
    import json
    import re
    nb = json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"]), name
    for needle in ("lab.store", "lab.sn.", "lab.runtime", ".client"):
        assert not any(needle in src for src in code), f"{name} uses {needle}"
    private = [m.group(0) for src in code for m in re.finditer(r"\._[a-z]\w*", src)]
    assert not private, f"{name} uses private names {private}"
    if any("Lab(" in src for src in code):      # re-runs after a killed kernel start from a clean store
        assert any("lab.reset()" in src for src in code), name
