"""Run one clipforge CLI command in this (child) process and report its peak memory.

    python tests/peak_rss.py REPORT.json -- ARGS...

writes {"rc": exit code, "hwm_bytes": VmHWM} to REPORT.json (VmHWM from /proc/self/status: the peak resident
set of the whole process, torch and the model included). The memory-budget tests run each command this way.

`embed_each_in_child(refs)` loads many model references (`clipforge embed --model REF`) in one child under a
6 GB address-space limit, for the tests whose point is that loading them allocates nothing.
"""
import json
import os
import resource
import subprocess
import sys
import textwrap

GB = 2**30

_EMBED_EACH = textwrap.dedent("""
    import contextlib, io, json, sys
    from clipforge.cli import main
    results = {}
    for name, ref in json.loads(sys.argv[1]).items():
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["embed", "--model", ref, "--text", "hi"])
        results[name] = [rc, err.getvalue()]
    # VmHWM: this process image's own peak. ru_maxrss would also carry the parent's peak across fork + exec,
    # so the test would measure whatever pytest had allocated before it.
    results["_hwm_kb"] = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")))
    print(json.dumps(results))
""")


def _limit_memory():  # a regression must fail its test, not take the machine down with it
    resource.setrlimit(resource.RLIMIT_AS, (6 * GB, 6 * GB))


def embed_each_in_child(refs: dict) -> tuple[dict, int]:
    """({name: [exit code, stderr]}, the child's peak resident bytes) for `clipforge embed --model REF --text
    hi` on each of `refs` ({name: REF}), all in one child process limited to 6 GB of address space."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", _EMBED_EACH, json.dumps(refs)], capture_output=True, text=True,
                          env=env, timeout=300, preexec_fn=_limit_memory)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return results, results.pop("_hwm_kb") * 1024


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
