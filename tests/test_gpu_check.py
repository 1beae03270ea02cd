"""bench/gpu_check.sh: valid bash, and on a machine without a usable GPU it stops at once with exit 2 and one
clear line (its checks themselves need a GPU: they are run through the device tool, docs/benchmarks.md)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the checks would run")


def test_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def _run(tmp_path, path_dirs=()):
    env = {**os.environ, "PYTHON": sys.executable, "PATH": os.pathsep.join([*map(str, path_dirs),
                                                                              os.environ["PATH"]])}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True, env=env,
                          timeout=120)


@no_gpu
def test_without_nvidia_smi_it_exits_2_in_one_line(tmp_path):
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("dirname", "mkdir", "ls", "timeout", "tee"):  # what the script needs before its GPU gate
        os.symlink(subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip(), bare / tool)
    env = {"PATH": str(bare), "PYTHON": sys.executable}
    p = subprocess.run(["/bin/bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "no NVIDIA GPU" in p.stderr


@no_gpu
def test_a_gpu_torch_cannot_use_exits_2_naming_torch(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: pretend'\n")
    (fake / "nvidia-smi").chmod(0o755)
    p = _run(tmp_path, [fake])
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "torch.cuda.is_available() is False" in p.stderr


@no_gpu
def test_the_python_part_refuses_without_cuda():
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "parity"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "no CUDA device" in p.stderr
