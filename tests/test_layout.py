"""The layering of repro/ (docs/architecture.md), held against the code's own imports.

Each rule names modules and what they must never reach, directly or through other modules. The
checker is tested on a small package that breaks each rule, so a rule that stops firing fails too.
"""

from __future__ import annotations

from pathlib import Path

from conftest import REPO
from support.imports import circles, graph, reachable

BASELINES = ("repro.methods.cmi", "repro.methods.deepinv", "repro.methods.dfnd", "repro.methods.fast",
             "repro.methods.generative", "repro.methods.inversion", "repro.methods.mosaickd",
             "repro.methods.sampling", "repro.methods.supervised")
TRAINING = ("repro.train", "repro.methods", "repro.kdci", "repro.pipeline", "repro.tracking", "repro.registry")


def _in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(edges: dict[str, set[str]]) -> list[str]:
    """Every broken rule, one line each (empty when the layering holds)."""
    found = [f"import circle: {' <-> '.join(group)}" for group in circles(edges)]

    def never(who: tuple[str, ...], forbidden: tuple[str, ...], why: str, allowed: tuple[str, ...] = ()) -> None:
        for module in sorted(m for m in edges if _in(m, who)):
            bad = sorted(t for t in reachable(edges, module) if _in(t, forbidden) and not _in(t, allowed))
            if bad:
                found.append(f"{module} reaches {', '.join(bad)}: {why}")

    never(("repro.train.engine",), ("repro.methods", "repro.kdci"), "the engine never names a method",
          allowed=("repro.methods.base",))
    never(BASELINES, ("repro.kdci",), "a baseline never knows KDCI exists")
    never(("repro.kdci",), BASELINES, "KDCI wraps any baseline through DFKDMethod only")
    never(("repro.nets", "repro.losses", "repro.data"), TRAINING, "nets, losses and data know nothing of training")
    never(("repro.registry",), ("repro.train.resume", "repro.train.engine"), "the Hub code never reaches training state")
    never(("repro.artefact", "repro.io"), ("repro.kdci", "repro.methods", "repro.train"),
          "the artefact format is below every method (heads register themselves)")
    never(("repro.config", "repro.errors"), ("repro",), "config and errors are leaves", allowed=("repro.errors",))
    for module, targets in sorted(edges.items()):
        if "mlflow" in targets and not _in(module, ("repro.tracking",)):
            found.append(f"{module} imports mlflow: only repro.tracking may")
        if "huggingface_hub" in targets and not _in(module, ("repro.registry",)):
            found.append(f"{module} imports huggingface_hub: only repro.registry may")
        if "repro.configurables" in targets and module != "repro.cli":
            found.append(f"{module} imports repro.configurables: only the CLI may (names are registered at the top)")
    return found


def test_the_package_keeps_its_layers() -> None:
    assert violations(graph(REPO, "repro")) == []


def test_every_module_is_in_a_layer() -> None:
    """A new module goes into one of the documented places, not beside them."""
    places = ("repro.nets", "repro.data", "repro.losses", "repro.methods", "repro.kdci", "repro.train",
              "repro.tracking", "repro.pipeline", "repro.registry")
    top = {"repro", "repro.__main__", "repro.artefact", "repro.io", "repro.cli", "repro.config",
           "repro.configurables", "repro.errors", "repro.reproducible", "repro.startup"}
    stray = sorted(m for m in graph(REPO, "repro") if m not in top and not _in(m, places))
    assert stray == []


def _package(root: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return graph(root, "repro")


def test_the_checker_finds_circles_and_broken_rules(tmp_path: Path) -> None:
    edges = _package(tmp_path, {
        "repro/__init__.py": "",
        "repro/config.py": "import repro.configurables\n",
        "repro/configurables.py": "from repro import config\n",
        "repro/methods/__init__.py": "",
        "repro/methods/base.py": "",
        "repro/methods/cmi.py": "def f():\n    from repro.kdci import method\n",
        "repro/kdci/__init__.py": "",
        "repro/kdci/method.py": "from repro.methods.base import DFKDMethod\n",
        "repro/train/__init__.py": "",
        "repro/train/engine.py": "from ..methods import cmi\n",
        "repro/train/resume.py": "",
        "repro/registry/__init__.py": "",
        "repro/registry/hub.py": "from repro.train import engine\nimport huggingface_hub\n",
        "repro/nets/__init__.py": "import mlflow\nfrom repro.train.resume import x\n",
    })
    found = violations(edges)
    expected = ["import circle: repro.config <-> repro.configurables",
                "repro.train.engine reaches repro.kdci.method, repro.methods.cmi",
                "repro.methods.cmi reaches repro.kdci.method",
                "repro.nets reaches repro.train.resume",
                "repro.registry.hub reaches repro.train.engine",
                "repro.nets imports mlflow", "repro.config imports repro.configurables"]
    for line in expected:
        assert any(f.startswith(line) for f in found), (line, found)
    assert not any(f.startswith("repro.kdci.method reaches") for f in found)  # base is the allowed seam


def test_heavy_libraries_are_imported_only_where_they_are_used() -> None:
    """A stage pays for every library it imports before its first step (issue 16): registering the gin
    names and loading the CLI must not import the tracking, Hub, DVC, plotting or scikit-learn stacks."""
    import subprocess
    import sys

    heavy = ["mlflow", "huggingface_hub", "dvc", "matplotlib", "sklearn", "scipy", "pandas", "torchvision.utils"]
    probe = ("import sys, repro.cli, repro.configurables; "
             f"print(','.join(name for name in {heavy!r} if name in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "", f"imported at start-up: {done.stdout.strip()}"
