"""Reproducible mode: pin the CPU kernels to a common x86-64 instruction set and fix the thread count
before torch is imported, so the last bits of a CPU result depend on code, config and seed, not on
which machine ran it.

The same code and seed trained a different digits teacher on another x86-64 CPU
(docs/stack-notes.md): torch, MKL and oneDNN each pick kernels for the CPU they find (AVX-512 here,
AVX2 elsewhere), and kernels of different widths sum in different orders. Each library reads its pin
from the environment once, when it first dispatches, so the pins must be set before ``import torch``.
``repro <verb>`` applies them first thing (:func:`apply`); ``REPRO_REPRODUCIBLE=0`` turns the mode
off and ``REPRO_THREADS=N`` sets the thread count (default 2).

Limits: the pins make kernel *selection* common; oneDNN may still block by cache size and MKL's
vendor-neutral branch is the only one documented for non-Intel CPUs (see ``ISA_PINS``). A GPU run
is untouched.

``python -m repro.reproducible`` runs :func:`probe` (used by :func:`compare_pinned` in subprocesses).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

from repro.errors import UserError

SWITCH = "REPRO_REPRODUCIBLE"
THREADS = "REPRO_THREADS"
DEFAULT_THREADS = 2

# The instruction-set pins, each checked against its library's documentation:
ISA_PINS: dict[str, str] = {
    # torch's own kernels (ATen DispatchStub): `default`, `avx2` or `avx512` on x86-64
    # (aten/src/ATen/native/DispatchStub.cpp, compute_cpu_capability). AVX2 is what every x86-64
    # server of the last ten years has, Intel or AMD.
    "ATEN_CPU_CAPABILITY": "avx2",
    # oneMKL Conditional Numerical Reproducibility (oneMKL developer guide, "Specifying Code Branches"
    # and "Getting Started with CNR"): on non-Intel CPUs only AUTO and COMPATIBLE are honoured and
    # `AVX2` silently falls back to AUTO, so AVX2 would not give an AMD and an Intel machine the same
    # gemm. COMPATIBLE (SSE2 without rcpps/rsqrtps) is the one branch both vendors run; measured here,
    # a 512x512 sgemm costs ~3x, a training step much less (MKL only serves linear layers and matmul).
    "MKL_CBWR": "COMPATIBLE",
    # oneDNN (convolutions, batch norm) CPU dispatcher control: ONEDNN_MAX_CPU_ISA, values SSE41, AVX,
    # AVX2, AVX512_CORE, ... (oneDNN developer guide, "CPU Dispatcher Control"); DNNL_MAX_CPU_ISA is
    # the older spelling (oneDNN <= 2.4), still read as a fallback.
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",
}
# oneMKL "Reproducibility Conditions": a fixed thread count and no dynamic adjustment of it.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
FIXED_SCHEDULING: dict[str, str] = {"OMP_DYNAMIC": "FALSE", "MKL_DYNAMIC": "FALSE"}

_log = logging.getLogger(__name__)
_TOO_LATE = ("torch was imported before reproducible mode was applied: CPU kernels not pinned (start the process "
             "with `repro`, or set the variables of repro.reproducible.pinned_environment before importing torch)")
_said: set[str] = set()  # the late note is said once per process


def requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether reproducible mode is asked for: on unless ``REPRO_REPRODUCIBLE`` is 0/false/no/off."""
    value = (os.environ if environ is None else environ).get(SWITCH, "1").strip().lower()
    return value not in ("0", "false", "no", "off")


def thread_count(environ: Mapping[str, str] | None = None) -> int:
    """``REPRO_THREADS`` (default 2): the one thread count every reproducible run uses."""
    raw = (os.environ if environ is None else environ).get(THREADS, str(DEFAULT_THREADS)).strip()
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"{THREADS}={raw!r} is not a positive integer: set e.g. {THREADS}=2 (or unset it)")
    return int(raw)


def pinned_environment(threads: int) -> dict[str, str]:
    """Every variable reproducible mode sets, with its value."""
    return {**ISA_PINS, **{name: str(threads) for name in THREAD_VARIABLES}, **FIXED_SCHEDULING}


def unpinned_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without the instruction-set pins (thread settings kept: only the ISA differs)."""
    return {name: value for name, value in environ.items() if name not in ISA_PINS and name != SWITCH} | {SWITCH: "0"}


def apply(environ: MutableMapping[str, str] | None = None) -> dict[str, Any]:
    """Put reproducible mode in force for this process (and the processes it starts); returns :func:`status`.

    Call it before anything imports torch. If torch is already imported (library use), the ISA pins
    could no longer take effect: they are not set (so nothing claims them), a one-line note is logged
    once, and the record says the mode is not in force; the thread count, which torch can still
    change, is fixed.
    """
    environ = os.environ if environ is None else environ
    if not requested(environ):
        return status(environ)
    threads = thread_count(environ)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(threads)
        if not _said:
            _said.add(_TOO_LATE)
            # logging, not print: a host application or pytest decides where notes go; a bare
            # interpreter prints WARNING records to stderr.
            _log.warning("note: %s", _TOO_LATE)
        return status(environ)
    environ.update(pinned_environment(threads))
    return status(environ)


def status(environ: Mapping[str, str] | None = None, threads_in_use: int | None = None) -> dict[str, Any]:
    """What is in force in this process, for the platform record: flat, so MLflow tags can carry it.

    ``reproducible`` is true only when every ISA pin holds its value (set before torch was imported:
    :func:`apply` never sets them later) and the thread variables name one count, the one torch
    uses (``threads_in_use``, when given). Otherwise ``reproducible_note`` says why not.
    """
    environ = os.environ if environ is None else environ
    names = [*ISA_PINS, *THREAD_VARIABLES, *FIXED_SCHEDULING]
    pins = " ".join(f"{name}={environ[name]}" for name in names if name in environ)
    pinned_threads = environ.get(THREAD_VARIABLES[0])
    isa_pinned = all(environ.get(name) == value for name, value in ISA_PINS.items())
    threads_fixed = pinned_threads is not None and all(environ.get(name) == pinned_threads for name in THREAD_VARIABLES)
    threads_match = threads_in_use is None or str(threads_in_use) == pinned_threads
    record: dict[str, Any] = {"reproducible": isa_pinned and threads_fixed and threads_match, "pins": pins or "none"}
    if record["reproducible"]:
        return record
    if not requested(environ):
        record["reproducible_note"] = f"off ({SWITCH}={environ.get(SWITCH)})"
    elif not isa_pinned:
        record["reproducible_note"] = ("not in force: CPU kernels not pinned (the process did not start with `repro`, "
                                       "or torch was imported first)")
    else:
        record["reproducible_note"] = (f"not in force: torch uses {threads_in_use} threads, "
                                       f"{', '.join(f'{n}={environ.get(n)}' for n in THREAD_VARIABLES)}")
    return record


def start_cli() -> None:
    """:func:`apply` for ``repro <verb>``: a bad ``REPRO_THREADS`` is one ``error:`` line and exit status 2."""
    try:
        apply()
    except UserError as exc:
        if os.environ.get("REPRO_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


# --- Is the pin in force? The same fixed float32 work, pinned and unpinned, in fresh processes. ---

def _digest(tensor: Any) -> str:
    return hashlib.sha256(tensor.detach().contiguous().numpy().tobytes()).hexdigest()[:16]


def probe(repeats: int = 1) -> dict[str, Any]:
    """Digests of a fixed float32 computation typical of our training, and its median time.

    Seeded tensors: ``conv2d`` [32, 16, 12, 12] * [32, 16, 3, 3] (oneDNN), ``matmul`` [256, 512] @
    [512, 256] (MKL sgemm), ``softmax`` and ``sum`` over [256, 512] (ATen kernels), and ``train``:
    the weights of a tiny CNN after two SGD steps (conv, batch norm, linear, cross-entropy).
    ``seconds`` is the median over ``repeats`` runs of all of it, after one warm-up run.
    """
    import torch

    def work() -> dict[str, Any]:
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(32, 16, 12, 12, generator=generator)
        kernel = torch.randn(32, 16, 3, 3, generator=generator)
        left, right = torch.randn(256, 512, generator=generator), torch.randn(512, 256, generator=generator)
        labels = torch.randint(0, 10, (32,), generator=generator)
        outputs = {"conv2d": torch.nn.functional.conv2d(images, kernel, padding=1), "matmul": left @ right,
                   "softmax": torch.softmax(left, dim=1), "sum": left.sum(dim=1)}
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(), torch.nn.Linear(32, 10))
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        for _ in range(2):
            loss = torch.nn.functional.cross_entropy(net(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        outputs["train"] = torch.cat([parameter.detach().flatten() for parameter in net.parameters()])
        return outputs

    outputs = work()  # also the warm-up: first calls JIT-compile oneDNN kernels
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        work()
        times.append(time.perf_counter() - began)
    return {"digests": {name: _digest(value) for name, value in outputs.items()},
            "seconds": statistics.median(times) if times else float("nan"),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}


def run_probe(pinned: bool, repeats: int = 1, threads: int | None = None) -> dict[str, Any]:
    """:func:`probe` in a fresh interpreter, with the pins set (``pinned``) or removed."""
    threads = thread_count() if threads is None else threads
    base = {**os.environ, **{name: str(threads) for name in THREAD_VARIABLES}, **FIXED_SCHEDULING}
    environ = {**base, **pinned_environment(threads)} if pinned else unpinned_environment(base)
    completed = subprocess.run([sys.executable, "-m", "repro.reproducible", str(repeats)], env=environ, check=False,
                               capture_output=True, text=True, timeout=600)
    if completed.returncode != 0:
        raise RuntimeError(f"probe subprocess failed ({completed.returncode}): {completed.stderr.strip()[-500:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def compare_pinned(repeats: int = 20, rounds: int = 2, threads: int | None = None) -> dict[str, Any]:
    """Pinned vs unpinned on this machine: which outputs differ in their bits, and the time ratio.

    ``rounds`` pairs of processes run in alternating order (pinned first, then unpinned first), so a
    drift in machine speed hits both; the time of each side is the median of its processes' medians.
    """
    runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    for index in range(rounds):
        for pinned in ((True, False) if index % 2 == 0 else (False, True)):
            runs[pinned].append(run_probe(pinned, repeats, threads))
    pinned, unpinned = runs[True][0], runs[False][0]
    stable = all(run["digests"] == pinned["digests"] for run in runs[True])
    pinned_s = statistics.median(run["seconds"] for run in runs[True])
    unpinned_s = statistics.median(run["seconds"] for run in runs[False])
    return {"pins": " ".join(f"{name}={value}" for name, value in ISA_PINS.items()), "threads": pinned["threads"],
            "pinned_capability": pinned["cpu_capability"], "unpinned_capability": unpinned["cpu_capability"],
            "differs": {name: digest != unpinned["digests"][name] for name, digest in pinned["digests"].items()},
            "pinned_repeatable": stable, "pinned_ms": 1000 * pinned_s, "unpinned_ms": 1000 * unpinned_s,
            "cost_ratio": pinned_s / unpinned_s, "repeats": repeats, "rounds": rounds}


def format_comparison(result: dict[str, Any]) -> str:
    """Lines for ``repro bench``: which outputs the pin changes, and what it costs."""
    changed = [name for name, differs in result["differs"].items() if differs]
    same = [name for name, differs in result["differs"].items() if not differs]
    return "\n".join([
        f"reproducible mode ({result['pins']}, {result['threads']} threads): torch dispatches to "
        f"{result['pinned_capability']} pinned, {result['unpinned_capability']} unpinned",
        f"  output bits pinned vs unpinned: differ in {', '.join(changed) or 'none'}; same in {', '.join(same) or 'none'}"
        f"; pinned repeatable across processes: {'yes' if result['pinned_repeatable'] else 'NO'}",
        f"  same work (conv2d, matmul, softmax, sum, 2 SGD steps of a tiny CNN): pinned {result['pinned_ms']:.1f} ms, "
        f"unpinned {result['unpinned_ms']:.1f} ms -> x{result['cost_ratio']:.2f} (medians of {result['repeats']} "
        f"runs in each of {result['rounds']} processes per side)",
    ])


if __name__ == "__main__":
    print(json.dumps(probe(int(sys.argv[1]) if len(sys.argv) > 1 else 1)))
