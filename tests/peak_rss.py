"""Run one clipforge CLI command in this (child) process and report its peak memory.

    python tests/peak_rss.py REPORT.json -- ARGS...

writes {"rc": exit code, "hwm_bytes": VmHWM} to REPORT.json (VmHWM from /proc/self/status: the peak resident
set of the whole process, torch and the model included). The memory-budget tests run each command this way.
"""
import json
import sys


def hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        return 1024 * int(next(ln.split()[1] for ln in f if ln.startswith("VmHWM:")))


if __name__ == "__main__":
    report, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: peak_rss.py REPORT.json -- ARGS..."
    from clipforge.cli import main

    rc = main(args)
    with open(report, "w") as f:
        json.dump({"rc": rc, "hwm_bytes": hwm_bytes()}, f)
    sys.exit(0)
