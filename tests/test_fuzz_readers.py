"""Fuzz harness for every reader of untrusted bytes (reliability issue): image decode, tar / webdataset shards
(plain and gzip), CSV / JSONL / parquet manifests, checkpoint configs and YAML training configs. HTTP bodies are
fuzzed from the server's OpenAPI schema in tests/test_serve_fuzz.py.

Every input must end in one of {a sample, a counted reason, a one-line error} (`fuzz_targets.py`), and a child
process running all targets — seeded mutations plus the hostile-file generator's worst cases (sparse and
compressed GiB members, near-limit 16-bit images, huge captions) — stays under the 1.5 GB memory budget.
Hypothesis runs a bounded number of examples (CLIPFORGE_FUZZ_EXAMPLES per target, default 25) with no example
database, so CI time stays bounded and nothing is written into the checkout.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fuzz_targets as ft

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXAMPLES = int(os.environ.get("CLIPFORGE_FUZZ_EXAMPLES", "25"))
OUTCOMES = {"sample", "counted", "error"}

_edit = st.tuples(st.integers(0, 2), st.integers(0, 1 << 30), st.integers(0, 255))
_mutated = st.tuples(st.integers(0, 5), st.lists(_edit, min_size=0, max_size=12),
                     st.one_of(st.none(), st.integers(0, 1 << 30)))


def _input(target: str, choice) -> bytes:
    if isinstance(choice, bytes):
        return choice
    k, edits, cut = choice
    return ft.mutate(ft.seed_for(target, k), edits, cut)


@pytest.mark.parametrize("target", ft.TARGETS)
def test_every_reader_ends_in_a_sample_a_count_or_one_line(target):
    seen: dict = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(choice=st.one_of(_mutated, st.binary(max_size=2048)))
    def run(choice):
        out = ft.run_target(target, _input(target, choice))
        assert out in OUTCOMES
        seen[out] = seen.get(out, 0) + 1

    run()
    assert sum(seen.values()) >= min(EXAMPLES, 10)


def test_the_seeds_are_usable_so_the_fuzz_starts_from_real_inputs():
    """Unmutated seeds give samples (images, shards, manifests, YAML) or the expected refusal (a checkpoint
    config without weights): otherwise the fuzz would only exercise the first error path."""
    outs = {t: ft.run_target(t, ft.seed_for(t)) for t in ft.TARGETS}
    assert outs == {**{t: "sample" for t in ft.TARGETS}, "checkpoint-config": "error"}


def _hostile_inputs(d: Path) -> list[str]:
    """The generators' worst cases, named TARGET__what for the child (read by path, never into memory)."""
    import hostile_files as hf

    made = []
    for name, fn in sorted(vars(hf).items()):
        if name.startswith("fuzz_input_") and callable(fn):
            made += [str(p) for p in fn(d)]
    try:
        import hostile_images as hi
    except ImportError:
        hi = None
    for name, fn in sorted(vars(hi).items()) if hi is not None else ():
        if name.startswith("fuzz_input_") and callable(fn):
            made += [str(p) for p in fn(d)]
    return made


def test_all_readers_stay_under_the_memory_budget(tmp_path):
    made = _hostile_inputs(tmp_path)
    r = subprocess.run([sys.executable, str(Path(ft.__file__)), str(tmp_path), str(max(EXAMPLES // 2, 8))],
                       capture_output=True, text=True, timeout=900,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(ft.__file__).parent)})
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(report["counts"]) == set(ft.TARGETS)
    assert all(set(c) <= OUTCOMES for c in report["counts"].values())
    assert report["hwm_bytes"] < ft.BUDGET_BYTES, (report["hwm_bytes"] / 2**20, made)
