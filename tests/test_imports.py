"""What the CLI's fast paths import: no pandas, matplotlib, ipywidgets, numpy or IPython on the way to
running a container or listing images, so `labkit run` costs what the run costs, not what the notebooks'
libraries cost to import (they were ~420 ms of a 530 ms `labkit run`)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = {"pandas", "matplotlib", "ipywidgets", "numpy", "IPython", "tqdm", "scipy", "nbformat"}

PROBE = """
import json, sys
from labkit.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "mods": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def _imports(*argv: str) -> tuple[int, set[str]]:
    r = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    last = r.stdout.strip().splitlines()[-1]
    data = json.loads(last)
    return data["rc"], set(data["mods"])


def test_version_and_help_are_light():
    rc, mods = _imports("backends")
    assert rc == 0 and not mods & HEAVY, mods & HEAVY


@pytest.mark.root
def test_run_and_images_import_nothing_heavy(tmp_path):
    R = ["--root", str(tmp_path / "lab"), "--backend", "overlay"]
    for argv in (["image", "import", "busybox", *R], ["run", "--rm", *R, "busybox", "true"], ["images", *R],
                 ["ps", "-a", *R]):
        rc, mods = _imports(*argv)
        assert rc == 0, argv
        assert not mods & HEAVY, f"labkit {' '.join(argv[:2])} imported {sorted(mods & HEAVY)}"
