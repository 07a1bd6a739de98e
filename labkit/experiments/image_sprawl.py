"""Experiment ``image-sprawl``: a chain of ad-hoc commits against the same result committed once, and what
prune reclaims once the result is no longer wanted — through :class:`labkit.Lab`, as a notebook would.

Each ad-hoc step rewrites the same file (an edited config, an upgraded package): the chain keeps every
version, the single commit only the last.

Columns: ``approach`` (chain, once), ``images``, ``bytes_total`` (the result's size above the base, df
total), ``bytes_freed`` and ``deleted`` (what removing the result's tag and pruning reclaimed).
"""
from __future__ import annotations

import shutil
import tempfile
from typing import Any

import pandas as pd

from ..lab import Lab
from .common import MIB, backend_param, median_table, store_options
from .framework import Context, Param, experiment


@experiment("image-sprawl", title="a chain of ad-hoc commits vs the same result recorded once; what prune reclaims",
            params=[backend_param(("overlay", "thin", "copy")),
                    Param("steps", "int", 5, "ad-hoc commits in the chain", min=1, max=50),
                    Param("write", "size", "1M", "bytes each step writes")],
            columns={"approach": "chain (one commit per step) or once (one commit of everything)",
                     "images": "images the approach left",
                     "bytes_total": "the result's size above the base: its layer and its ancestors' (df total)",
                     "bytes_freed": "what prune reclaimed once the result was untagged"},
            summary=lambda df: median_table(df, ["backend", "approach"], "bytes_total"))
def sprawl_case(p: dict[str, Any], repeat: int, ctx: Context) -> list[dict[str, Any]]:
    """Per repetition a fresh Lab with busybox; both approaches in it, one after the other."""
    rows = []
    for r in range(repeat + 1):
        base = tempfile.mkdtemp(prefix="sprawl-", dir=ctx.root)
        try:
            with Lab(base, p["backend"], **store_options(p["backend"], 64 * MIB + p["steps"] * p["write"] * 2)) as lab:
                lab.import_image("busybox", tag="busybox")
                for approach in ("chain", "once"):
                    rows.append({"approach": approach, "repeat": r, **_approach(lab, approach, p)})
        finally:
            shutil.rmtree(base, ignore_errors=True)
        ctx.tick(1)
    return rows


def _approach(lab: Lab, approach: str, p: dict[str, Any]) -> dict[str, Any]:
    count = p["write"] // 4096
    image, made = "busybox", []
    for i in range(p["steps"]) if approach == "chain" else [None]:
        cmd = f"dd if=/dev/urandom of=/data bs=4k count={count} 2>/dev/null; echo {i} > /step"
        c = lab.run(image, ["sh", "-c", cmd], name=f"{approach}{i}")
        image = lab.commit(c, None)
        c.remove()
        made.append(image[:12])
    result = f"{approach}:result"
    lab.tag(image, result)
    df = lab.df().set_index("name")
    total = int(df.loc[made[-1], "total"] - df.loc[lab.inspect("busybox")["id"][:12], "total"])
    # the result's only tag: rmi deletes the image, its untagged ancestors dangle and prune takes them
    removed = pd.concat([lab.rmi(result), lab.prune()], ignore_index=True)
    deleted = int((removed.action == "deleted").sum())
    return {"images": len(made), "bytes_total": total, "bytes_freed": int(removed.freed_bytes.sum()),
            "deleted": deleted}
