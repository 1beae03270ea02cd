"""Dropping OpenVINO engines must leave the process able to handle signals.

Each OpenVINO Core's CPU plugin installs an alternate signal stack and, when destroyed, puts back the one it
found; Cores destroyed in creation order leave the thread on a freed stack, and the next Python signal handler
(they run on the alternate stack) dies with SIGSEGV. This is what killed the test suite once a server thread
ran after the engine tests. The scenario runs in a subprocess so that a regression kills that process, not
pytest.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")

SCENARIO = textwrap.dedent("""
    import ctypes, faulthandler, gc, os, signal, sys, time
    import torch
    from clipforge.encode import Encoder
    from clipforge.models import create_model

    faulthandler.enable()  # gives the main thread an alternate stack, as pytest does

    class Stack(ctypes.Structure):
        _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]

    def alt_stack_mapped():
        s = Stack()
        ctypes.CDLL(None).sigaltstack(None, ctypes.byref(s))
        for line in open("/proc/self/maps"):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= s.sp < hi:
                return True
        return False

    torch.manual_seed(0)
    model = create_model("tiny").eval()
    ids = model.tokenizer(["a cat"])
    first = Encoder.from_model(model, engine="openvino", cache_dir=sys.argv[1])
    second = Encoder.from_model(model, engine="openvino", precision="int8", cache_dir=sys.argv[1])
    a = first.engine.encode_tokens(ids)
    b = second.engine.encode_tokens(ids)
    del first          # dropped in the order they were made: the order that left a freed stack behind
    gc.collect()
    del second
    gc.collect()
    print("mapped", alt_stack_mapped(), flush=True)
    hits = []
    signal.signal(signal.SIGUSR1, lambda *_: hits.append(1))
    for _ in range(3):
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
    print("handled", len(hits), float((a * b).sum()), flush=True)
""")


def test_signals_are_handled_after_openvino_engines_are_dropped(tmp_path):
    r = subprocess.run([sys.executable, "-c", SCENARIO, str(tmp_path / "cache")], capture_output=True, text=True,
                       timeout=600)
    out = r.stdout + r.stderr[-3000:]
    assert r.returncode == 0, f"exit {r.returncode} (-11 = SIGSEGV): {out}"
    assert "mapped True" in r.stdout, out
    handled = r.stdout.split("handled ")[1].split()
    assert handled[0] == "3", out  # every signal reached its Python handler
    assert float(handled[1]) > 0.9, out  # and both engines had really run (unit vectors, fp32 vs int8)


def test_one_core_serves_every_engine(tmp_path):
    import torch

    from clipforge.encode import Encoder
    from clipforge.encode.openvino_engine import shared_core
    from clipforge.models import create_model

    torch.manual_seed(0)
    model = create_model("tiny").eval()
    core = shared_core()
    enc = Encoder.from_model(model, engine="openvino", cache_dir=str(tmp_path))
    assert shared_core() is core
    ref = Encoder.from_model(model, engine="torch")
    ids = model.tokenizer(["a cat", "two dogs"])
    torch.testing.assert_close(enc.engine.encode_tokens(ids), ref.engine.encode_tokens(ids), rtol=1e-4, atol=1e-5)
    assert any((tmp_path / "openvino").iterdir())  # CACHE_DIR, now given per compile, is still honoured
