"""One setting at a time on thin's side; paired rounds thin vs loop (alternating), inner=2 reads of 256 MiB."""
import os, sys, time, subprocess
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from harness import *
size = 256 * MIB
R = int(sys.argv[1]) if len(sys.argv) > 1 else 16
rows = []
with targets(size) as t:
    tdev, tback = backing_of(t["thin"])
    ldev, lback = backing_of(t["loop"])
    fusemnt = os.path.dirname(tback)
    def variant(label, apply, undo):
        apply()
        try:
            paired_reads(t, size, R, 2, label, rows)
        finally:
            undo()
    variant("base", lambda: None, lambda: None)
    variant("thin rotational=1", lambda: sysfs(tdev, "rotational", "1"), lambda: sysfs(tdev, "rotational", "0"))
    variant("loop rotational=0", lambda: sysfs(ldev, "rotational", "0"), lambda: sysfs(ldev, "rotational", "1"))
    variant("fuse noatime", lambda: subprocess.run(["mount", "-o", "remount,bind,noatime", fusemnt], check=True),
            lambda: subprocess.run(["mount", "-o", "remount,bind,relatime", fusemnt], check=True))
    variant("thin read_ahead_kb=0", lambda: sysfs(tdev, "read_ahead_kb", "0"), lambda: sysfs(tdev, "read_ahead_kb", "2560"))
    variant("base again", lambda: None, lambda: None)
save(rows, "exp5-settings.csv")
