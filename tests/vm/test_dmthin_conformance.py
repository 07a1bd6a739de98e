"""The dmthin backend passes the whole conformance suite on the kernel's own dm-thin (inside the VM).

The VM runs ``pytest tests/snapshots/test_conformance.py -k dmthin`` — and ``tests/vm/guest_dm.py``, the
device-mapper ioctls and the backend's gc collector, in the same guest process — once, in the shared boot
(see conftest.py), and writes JUnit XML; each host-side test below asserts on one check's outcome there.
It runs by default (about 3 minutes of the VM's time under emulation, see docs/vm.md);
``LABKIT_VM_CONFORMANCE=0`` leaves it out, ``LABKIT_VM_CONFORMANCE_K`` narrows it (a pytest ``-k``
expression ANDed with ``dmthin``), and the checks it leaves out are reported as skipped with that reason.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from labkit.snapshots.testing import CHECKS
from labkit.vm import GUEST_TMP

pytestmark = [pytest.mark.vm, pytest.mark.slow]

if os.environ.get("LABKIT_VM_CONFORMANCE", "1") == "0":
    pytest.skip("LABKIT_VM_CONFORMANCE=0: the dmthin conformance suite in the VM is left out",
                allow_module_level=True)

NARROW = os.environ.get("LABKIT_VM_CONFORMANCE_K", "").strip()
GUEST_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guest_dm.py")
#: the tests of guest_dm.py (they run in the guest only; read, not imported)
GUEST_TESTS = sorted(n.name for n in ast.parse(open(GUEST_FILE, encoding="utf-8").read()).body
                     if isinstance(n, ast.FunctionDef) and n.name.startswith("test_"))


#: guest pytest workers (pytest-xdist; the guest has 2 vCPUs): the 128-layer check runs beside the others
WORKERS = int(os.environ.get("LABKIT_VM_CONFORMANCE_WORKERS", "2"))


def vm_jobs(scratch: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    junit = os.path.join(scratch, "junit.xml")
    keep = f"dmthin and ({NARROW})" if NARROW else "dmthin"
    # plugins this run does not use cost seconds per guest process under emulation (hypothesis alone ~1 s on
    # the host): the controller and each worker would import them
    args = ["-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:anyio", "-p", "no:xdist.looponfail",
            "-q", "-o", "tmp_path_retention_policy=failed",
            "--basetemp", f"{GUEST_TMP}/pytest", "--junitxml", junit, "--durations=8",
            "tests/snapshots/test_conformance.py", GUEST_FILE, "-k", f"({keep}) or guest_dm"]
    if WORKERS > 1 and importlib.util.find_spec("xdist") is not None:   # the guest runs this venv
        args += ["-n", str(WORKERS), "--dist", "worksteal"]
    return [{"name": "dmthin-conformance", "pytest": args}], {"junit": junit}


@pytest.fixture(scope="module")
def outcomes(vm_session) -> dict[str, tuple[str, str]]:
    """testcase name -> (outcome, message) from the guest's JUnit XML."""
    junit = vm_session.expect[__name__]["junit"]
    assert os.path.exists(junit), (f"the guest wrote no JUnit XML; its pytest job: "
                                   f"{vm_session.batch.get('dmthin-conformance')}")
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome, msg = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome, msg = child.tag, (child.get("message") or child.text or "")[:2000]
        out[case.get("name", "")] = (outcome, msg)
    return out


def test_the_suite_ran_dmthin(outcomes) -> None:
    dm = {n: o for n, o in outcomes.items() if "dmthin" in n}
    assert dm, f"no dmthin test ran in the VM: {sorted(outcomes)[:5]}"
    skipped = {n: o[1] for n, o in dm.items() if o[0] == "skipped"}
    assert not skipped, f"dmthin was skipped in the VM (device-mapper should be there): {skipped}"


@pytest.mark.parametrize("check", list(CHECKS))
def test_dmthin_check_in_vm(outcomes, check: str) -> None:
    name = f"test_conformance[dmthin-{check}]"
    if NARROW and name not in outcomes:
        pytest.skip(f"left out by LABKIT_VM_CONFORMANCE_K={NARROW!r}")
    assert name in outcomes, f"{name} did not run in the VM"
    outcome, msg = outcomes[name]
    assert outcome == "passed", f"dmthin/{check} in the kernel: {outcome}: {msg}"


@pytest.mark.parametrize("name", GUEST_TESTS)
def test_guest_dm_in_vm(outcomes, name: str) -> None:
    """tests/vm/guest_dm.py, run in the guest: device-mapper's ioctls and dmthin's leftovers after a crash."""
    assert name in outcomes, f"{name} (tests/vm/guest_dm.py) did not run in the VM"
    outcome, msg = outcomes[name]
    assert outcome == "passed", f"guest_dm/{name} in the kernel: {outcome}: {msg}"
