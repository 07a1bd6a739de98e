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
    papermill.execute_notebook(str(NOTEBOOKS / name), str(tmp_path / name), parameters=params,
                               cwd=str(NOTEBOOKS.parent), kernel_name="python3", progress_bar=False,
                               log_output=False)
    if name == "report.ipynb":
        assert (tmp_path / "results" / "headline.json").exists()
        assert len(list((tmp_path / "results").glob("*.csv"))) >= 6
