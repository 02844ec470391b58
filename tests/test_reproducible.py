"""Reproducible mode: the CLI pins the CPU kernels before torch is imported, the pin is in force (the
bits change on an AVX-512 CPU and repeat across processes), and nothing claims a pin that came late."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from repro import reproducible

_PINNED_NAMES = (*reproducible.ISA_PINS, *reproducible.THREAD_VARIABLES, *reproducible.FIXED_SCHEDULING,
                 reproducible.SWITCH, reproducible.THREADS)


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -c CODE`` in a clean interpreter, without any pin inherited from this process."""
    environ = {name: value for name, value in os.environ.items() if name not in _PINNED_NAMES}
    return subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, env={**environ, **env}, capture_output=True,
                          text=True, timeout=300)


def test_pinned_bits_repeat_across_processes_and_differ_from_unpinned() -> None:
    first, second = reproducible.run_probe(pinned=True), reproducible.run_probe(pinned=True)
    assert first["digests"] == second["digests"]
    assert first["cpu_capability"] == "AVX2" and first["threads"] == reproducible.DEFAULT_THREADS
    unpinned = reproducible.run_probe(pinned=False)
    if unpinned["cpu_capability"] != "AVX512":
        pytest.skip(f"torch dispatches to {unpinned['cpu_capability']} here: the AVX2 pin changes nothing to see")
    differs = {name for name, digest in first["digests"].items() if digest != unpinned["digests"][name]}
    # Measured on an AVX-512 CPU: softmax (ATen's AVX2 kernels), conv2d (oneDNN capped at AVX2), matmul
    # (MKL's COMPATIBLE branch) and a training step change bits; a plain sum happens not to.
    assert {"conv2d", "softmax", "matmul", "train"} <= differs, differs


def test_the_cli_pins_before_anything_imports_torch() -> None:
    code = ("import os, sys, json\nfrom repro import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(json.dumps({'torch': 'torch' in sys.modules, 'env': {k: os.environ.get(k) for k in "
            f"{list(_PINNED_NAMES)!r}}}}}))\n"
            "import torch\nfrom repro.train.device import platform_record\nprint(json.dumps(platform_record()))")
    done = _python(code)
    assert done.returncode == 0, done.stderr
    before, record = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    assert before["torch"] is False
    assert {k: before["env"][k] for k in reproducible.ISA_PINS} == reproducible.ISA_PINS
    assert before["env"]["OMP_NUM_THREADS"] == before["env"]["MKL_NUM_THREADS"] == "2"
    assert record["reproducible"] is True and "reproducible_note" not in record
    assert "MKL_CBWR=COMPATIBLE" in record["pins"] and record["threads"] == 2
    assert record["cpu_capability"] == "AVX2"  # what torch actually dispatches to, not what was asked
    assert "note:" not in done.stderr
    imported = _python("import subprocess, sys\nprint(subprocess.run([sys.executable, '-X', 'importtime', '-m', 'repro', "
                       "'--help'], capture_output=True, text=True).stderr)")
    assert " torch" not in imported.stdout  # `repro` itself imports no torch before its verb runs


def test_opt_out_and_thread_count() -> None:
    show = "import json, os\nfrom repro import reproducible\nreproducible.apply()\nprint(json.dumps(reproducible.status()))"
    off = _python(show, REPRO_REPRODUCIBLE="0")
    record = json.loads(off.stdout)
    assert record["reproducible"] is False and record["pins"] == "none" and "REPRO_REPRODUCIBLE=0" in record["reproducible_note"]
    three = json.loads(_python(show, REPRO_THREADS="3").stdout)
    assert three["reproducible"] is True and "OMP_NUM_THREADS=3" in three["pins"] and "MKL_NUM_THREADS=3" in three["pins"]
    bad = _python("from repro import cli\ncli.main(['--help'])", REPRO_THREADS="many")
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: REPRO_THREADS"), bad.stderr


def test_a_pin_after_torch_is_said_once_and_not_claimed() -> None:
    code = ("import json, os, torch\nfrom repro import reproducible\nreproducible.apply()\nreproducible.apply()\n"
            "from repro.train.device import platform_record\n"
            "print(json.dumps([os.environ.get('ATEN_CPU_CAPABILITY'), torch.get_num_threads(), platform_record()]))")
    done = _python(code, REPRO_THREADS="1")
    aten, threads, record = json.loads(done.stdout)
    assert aten is None and threads == 1  # no pin pretended; the thread count, still changeable, is fixed
    assert record["reproducible"] is False and "not in force" in record["reproducible_note"]
    notes = [line for line in done.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "torch was imported before" in notes[0]


def test_status_is_derived_from_the_environment() -> None:
    pinned = reproducible.pinned_environment(2)
    assert reproducible.status(pinned, threads_in_use=2)["reproducible"] is True
    mismatch = reproducible.status(pinned, threads_in_use=4)
    assert mismatch["reproducible"] is False and "4 threads" in mismatch["reproducible_note"]
    partial = reproducible.status({**pinned, "MKL_CBWR": "AUTO"})
    assert partial["reproducible"] is False and "MKL_CBWR=AUTO" in partial["pins"]
    unpinned = reproducible.unpinned_environment(pinned)
    assert not set(reproducible.ISA_PINS) & set(unpinned) and unpinned["OMP_NUM_THREADS"] == "2"


def test_bench_section_reads_the_comparison() -> None:
    result = {"pins": "ATEN_CPU_CAPABILITY=avx2", "threads": 2, "pinned_capability": "AVX2",
              "unpinned_capability": "AVX512", "differs": {"conv2d": True, "sum": False}, "pinned_repeatable": True,
              "pinned_ms": 30.0, "unpinned_ms": 20.0, "cost_ratio": 1.5, "repeats": 10, "rounds": 2}
    text = reproducible.format_comparison(result)
    assert "differ in conv2d; same in sum" in text and "x1.50" in text and "AVX512 unpinned" in text
