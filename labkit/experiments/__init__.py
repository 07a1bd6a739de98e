"""Parameterised measurements that return tidy pandas DataFrames (one row per observation).

:mod:`~labkit.experiments.framework` declares parameters and runs cases on any Executor; each built-in
experiment is a module of its own that registers itself with the framework; importing this package
imports them all, so ``framework.get(name)`` and ``framework.names()`` know every one. Shared pieces:
:mod:`~labkit.experiments.common` (scratch stores, images, digests), :mod:`~labkit.experiments.fill`
(realistic file trees) and :mod:`~labkit.experiments.host` (the host columns every row carries).

>>> from labkit.experiments import framework, environment
>>> framework.names()[:2], "kernel" in environment()
(['snapshot-time', 'space-vs-containers'], True)
"""
from __future__ import annotations

# each module registers one experiment on import; this order is `labkit bench --list`'s
# isort: off
from . import (  # noqa: F401
    snapshot_time, space_vs_containers, cow_penalty, commit_cost, block_size, pool_exhaustion, thin_io,
    start_latency, image_sprawl,
)
from . import kernel_diff  # noqa: F401  (needs a VM: labkit.vm)
from . import minimal_image  # noqa: F401  (a minimal image vs a whole base OS)
from . import cli_latency  # noqa: F401  (the whole `labkit run` process vs podman and runc)
from . import recipe_vs_hand  # noqa: F401  (the same application by hand and by a recipe)
# isort: on
from . import framework
from .host import cpu_model, environment

__all__ = ["framework", "environment", "cpu_model"]
