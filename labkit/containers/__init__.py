"""labkit's container runtime: namespaces, pivot_root, cgroups, networks, OCI bundles for runc.

The runtime receives a mounted root directory and a command (see docs/containers.md):

>>> from labkit.containers import Runtime
>>> with Runtime("/tmp/lk-state") as rt:                                    # doctest: +SKIP
...     c = rt.run("/tmp/rootfs", ["sh", "-c", "echo $$ $(hostname)"], name="box")
...     print(c.logs(), c.exit_code); c.remove()
1 box
 0

Names are imported lazily, so the spawner (``python -m labkit.containers._spawner``) loads only what it
needs to fork containers.
"""
from __future__ import annotations

from .._sys import lazy

__all__ = ["Runtime", "Container", "Bind", "BridgeConfig", "Limits", "ContainerState", "Profile", "Pty"]
_WHERE = {"Runtime": "runtime", "Container": "runtime", "Bind": "state", "BridgeConfig": "network",
          "Limits": "cgroups", "ContainerState": "state", "Profile": "security", "Pty": "tty"}

__getattr__, __dir__ = lazy.attributes(__name__, _WHERE, globals())
