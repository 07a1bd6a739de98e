"""A second process on a store, for the multi-process tests: ``python _child.py BACKEND ROOT MODE KEY [PARENT]``.

Modes (``os._exit`` is a crash: no ``finally``, no ``close``, no cleanup of any kind):

* ``crash-create``  prepare KEY; die right after the backend made its storage, before the row is settled
* ``crash-view``    the same for a view of PARENT
* ``crash-remove``  remove KEY; die right after the backend released its storage, before the row is deleted
* ``hold-create``   prepare KEY; after the storage is made print ``{"id": N}`` and wait for a line on stdin,
                    then finish, close and print ``done``
* ``hold-open``     open the store, print ``open``; on each stdin line ``prepare K`` / ``write K`` / ``close``
                    act and answer ``ok`` (or ``error: ...``); EOF closes too
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

from labkit.snapshots import open_snapshotter


def main() -> None:
    backend, root, mode = sys.argv[1:4]
    key = sys.argv[4] if len(sys.argv) > 4 else ""
    parent = sys.argv[5] if len(sys.argv) > 5 else None
    sn = open_snapshotter(backend, root)
    create, remove = sn._create, sn._remove

    if mode in ("crash-create", "crash-view"):
        def crash_after_create(row, chain):
            create(row, chain)
            os._exit(17)
        sn._create = crash_after_create
        (sn.view if mode == "crash-view" else sn.prepare)(key, parent)
    elif mode == "crash-remove":
        def crash_after_remove(row):
            remove(row)
            os._exit(17)
        sn._remove = crash_after_remove
        sn.remove(key)
    elif mode == "hold-create":
        def hold(row, chain):
            state = create(row, chain)
            print(json.dumps({"id": row.id}), flush=True)
            sys.stdin.readline()
            return state
        sn._create = hold
        sn.prepare(key, parent)
        sn.close()
        print("done", flush=True)
        return
    elif mode == "hold-open":
        print("open", flush=True)
        for line in sys.stdin:
            cmd, _, arg = line.strip().partition(" ")
            try:
                if cmd == "prepare":
                    sn.prepare(arg)
                elif cmd == "write":
                    target = tempfile.mkdtemp(dir=os.path.dirname(root))
                    with sn.mounts(arg).mount(target):
                        with open(os.path.join(target, "f"), "w") as f:
                            f.write(arg)
                    os.rmdir(target)
                elif cmd == "close":
                    sn.close()
                    print("ok", flush=True)
                    return
                print("ok", flush=True)
            except Exception as e:  # noqa: BLE001 - reported to the test
                print(f"error: {type(e).__name__}: {e}", flush=True)
        sn.close()
        return
    raise SystemExit(f"mode {mode!r} did not crash")


if __name__ == "__main__":
    main()
