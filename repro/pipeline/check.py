"""params.yaml, checked whole before any stage runs: the one implementation behind
:func:`repro.pipeline.runset.read_params` and the first DVC stage (``repro check-params``).

DVC removes a stage's outputs before its command starts, so a value the command refuses (a profile
meant for another dataset, a misspelt experiment, ``methods: []``) used to cost the teachers or the
metrics. Every stage that reads params.yaml depends on the record :func:`write_record` writes, so DVC
runs this check first and stops before it removes anything.

Nothing here imports torch: the profile/dataset rule of ``stages.check_profile`` is read from the gin
files' text (gin's own parser, following includes), so the check takes a fraction of a second.
"""

from __future__ import annotations

import math
import re
import tokenize
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Sequence

import yaml

from repro import io
from repro.config import MAX_SEED  # one seed range for params.yaml and --bind
from repro.errors import UserError

REQUIRED = ("experiment", "profile", "methods", "seeds")
KEYS = ("experiment", "profile", "teacher_seeds", "seeds", "methods", "study", "launcher", "teacher")
TEACHER_KEYS = ("file", "arch", "expected_top1")
PRETRAINED = "models/pretrained"  # imported teacher files live here: a dep of stage params, so a replaced file re-imports
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_FIX = "see README, Profiles and parameters"


# ---------------------------------------------------------------- reading the file

class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice is an error (PyYAML silently keeps the last)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        key, line = loader.construct_object(key_node, deep=True), key_node.start_mark.line + 1
        try:
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (lines {first_line[key]} and {line})", key_node.start_mark)
            first_line[key] = line
        except TypeError:  # an unhashable key: construct_mapping below names it
            continue
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_yaml(path: Path) -> Any:
    """The YAML document at ``path``: UTF-8 text, no key given twice."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror or type(exc).__name__}): check the path") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): "
                        "save it as UTF-8") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}," if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if "given twice" in problem:
            raise UserError(f"{path}: {problem}: keep one (YAML would silently use the last)") from None
        raise UserError(f"cannot read {path} ({type(exc).__name__} at{where} {str(exc).splitlines()[0]}): "
                        "fix params.yaml") from None


# ---------------------------------------------------------------- the keys, one by one

def _is_seed(value: Any) -> bool:
    # bool is an int in Python: `seeds: [yes]` must not become seed 1.
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEED


def _plain(value: Any) -> bool:
    """A name that is one file name: no '/', '\\', '..' or other path syntax."""
    return isinstance(value, str) and _PLAIN.fullmatch(value) is not None


def _check_names(path: Path, params: dict[str, Any]) -> None:
    methods = params["methods"]
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise UserError(f"{path}: methods must be a non-empty list of names, e.g. [dafl, deepinv], not {methods!r}")
    if len(set(methods)) != len(methods):
        raise UserError(f"{path}: methods {methods} lists a method twice: list each once")
    for key in ("experiment", "profile"):
        if not isinstance(params[key], str):
            raise UserError(f"{path}: {key} must be one name, e.g. {key}: {'digits' if key == 'experiment' else 'smoke'}, "
                            f"not {params[key]!r}")
    named = [("experiment", params["experiment"]), ("profile", params["profile"])] + [("methods", m) for m in methods]
    for key, name in named:
        if not _plain(name):
            raise UserError(f"{path}: {key} {name!r} is not a plain name (letters, digits, '_' and '-'; no '/', '\\' "
                            f"or '..'): give the name of a gin/{'methods' if key == 'methods' else key + 's'}/ file "
                            "without .gin")


def _check_seeds(path: Path, params: dict[str, Any]) -> list[int]:
    seeds = params["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(_is_seed(s) for s in seeds):
        raise UserError(f"{path}: seeds must be a non-empty list of integers >= 0, e.g. [0, 1, 2], not {seeds!r} "
                        f"(at most {MAX_SEED})")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{path}: seeds {seeds} lists a seed twice: list each once")
    if "teacher_seed" in params:
        raise UserError(f"{path}: teacher_seed is now a list, teacher_seeds: e.g. teacher_seeds: [0, 1] "
                        "(every student seed is paired with every teacher)")
    teacher_seeds = params.get("teacher_seeds", [0])
    if (not isinstance(teacher_seeds, list) or not teacher_seeds or not all(_is_seed(s) for s in teacher_seeds)
            or len(set(teacher_seeds)) != len(teacher_seeds)):
        raise UserError(f"{path}: teacher_seeds must be a non-empty list of distinct integers >= 0, e.g. [0, 1], "
                        f"not {teacher_seeds!r}")
    return teacher_seeds


def _check_switches(path: Path, params: dict[str, Any]) -> tuple[bool, str]:
    study, launcher = params.get("study", False), params.get("launcher", "")
    if not isinstance(study, bool):
        raise UserError(f"{path}: study must be true or false, not {study!r}")
    if not isinstance(launcher, str):
        raise UserError(f"{path}: launcher must be a string (\"\" for none), e.g. launcher: \"torchrun --standalone "
                        f"--nproc_per_node=4 -m\", not {launcher!r}")
    return study, launcher


def _check_teacher(path: Path, teacher: Any, teacher_seeds: list[int]) -> str | dict[str, Any]:
    """``"train"``, or the import as ``{file, arch, expected_top1}`` (expected_top1 None: the benchmark's)."""
    example = f"teacher: {{file: {PRETRAINED}/cifar10_wrn40_2.pth, arch: wrn40_2}}"
    if teacher == "train":
        return teacher
    if not isinstance(teacher, dict):
        raise UserError(f"{path}: teacher must be train or a zju-vipa file to import, e.g. {example}, not {teacher!r}")
    unknown = sorted(map(str, set(teacher) - set(TEACHER_KEYS)))
    missing = [key for key in ("file", "arch") if key not in teacher]
    if unknown or missing:
        problem = f"unknown key {unknown[0]!r}" if unknown else f"no {missing[0]!r}"
        raise UserError(f"{path}: teacher has {problem}: it takes file, arch and optionally expected_top1, e.g. {example}")
    if len(teacher_seeds) != 1:
        raise UserError(f"{path}: an imported teacher is one teacher, so teacher_seeds must list exactly one seed "
                        f"(the folder models/teachers/seed<T> it goes to), e.g. teacher_seeds: [0], not {teacher_seeds}")
    file, arch, expected = teacher["file"], teacher["arch"], teacher.get("expected_top1")
    parts = PurePosixPath(file).parts if isinstance(file, str) else ()
    if len(parts) < 3 or "/".join(parts[:2]) != PRETRAINED or ".." in parts or "\\" in file:
        raise UserError(f"{path}: teacher.file must be a file under {PRETRAINED}/ (a dependency of stage params, so DVC "
                        f"re-imports a replaced file), e.g. {PRETRAINED}/cifar10_wrn40_2.pth, not {file!r}")
    if not Path(file).is_file():
        raise UserError(f"{path}: teacher.file {file} does not exist: put the zju-vipa checkpoint there, or set "
                        "teacher: train")
    if not _plain(arch):
        raise UserError(f"{path}: teacher.arch must be the repro network the file holds (`repro names`), e.g. wrn40_2, "
                        f"not {arch!r}")
    if expected is not None and (not isinstance(expected, (int, float)) or isinstance(expected, bool)
                                 or not math.isfinite(expected) or not 0 <= expected <= 100):
        raise UserError(f"{path}: teacher.expected_top1 must be a test top-1 in percent in [0, 100], or left out for "
                        f"the benchmark's figure, not {expected!r}")
    return {"file": file, "arch": arch, "expected_top1": None if expected is None else float(expected)}


def _available(folder: Path) -> str:
    return ", ".join(sorted(p.stem for p in folder.glob("*.gin"))) or "nothing"


def _check_gin_files(path: Path, params: dict[str, Any], gin_root: Path) -> None:
    checks = [("experiment", gin_root / "experiments", [params["experiment"]]),
              ("profile", gin_root / "profiles", [params["profile"]]),
              ("methods", gin_root / "methods", params["methods"])]
    for key, folder, names in checks:
        for name in names:
            if not (folder / f"{name}.gin").is_file():
                raise UserError(f"{path}: {key} {name!r} has no {folder}/{name}.gin; available: {_available(folder)}")


# ---------------------------------------------------------------- what the gin files say (no torch)

def _statements(path: Path, project: Path, seen: tuple[Path, ...] = ()) -> Iterator[Any]:
    """Every statement of the gin file ``path`` and, in place, of the files it includes."""
    import gin
    from gin import config_parser

    if path in seen:  # gin itself refuses the circle when the stage parses; here, just stop
        return
    try:
        text = path.read_text(encoding="utf-8")
        statements = list(config_parser.ConfigParser(text, gin.config.ParserDelegate(skip_unknown=True)))
    except (OSError, UnicodeDecodeError, SyntaxError, tokenize.TokenError) as exc:
        raise UserError(f"cannot read gin file {path} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): "
                        "fix it") from None
    for statement in statements:
        yield statement
        if isinstance(statement, config_parser.IncludeStatement):
            included = next((p for p in (project / statement.filename, Path(statement.filename)) if p.is_file()), None)
            if included is None:
                raise UserError(f"gin file {path} includes {statement.filename}, which does not exist: fix the include")
            yield from _statements(included, project, (*seen, path))


class GinFacts:
    """What an experiment and profile's gin files bind, read from their text: the dataset (the
    ``gin/data/<name>.gin`` the experiment includes; a test holds each name to the one gin builds),
    the teacher network and the datasets the profile is for (``profile_scope.datasets``)."""

    def __init__(self, params: dict[str, Any], gin_root: Path) -> None:
        from gin import config_parser

        project = gin_root.parent
        self.dataset: str | None = None
        self.teacher_arch: str | None = None
        self.profile_datasets: tuple[str, ...] = ()
        files = [gin_root / "experiments" / f"{params['experiment']}.gin", gin_root / "profiles" / f"{params['profile']}.gin"]
        for file in files:
            for statement in _statements(file, project):
                if isinstance(statement, config_parser.IncludeStatement):
                    included = PurePosixPath(statement.filename)
                    if included.parent.name == "data" and included.suffix == ".gin":
                        self.dataset = included.stem
                elif isinstance(statement, config_parser.BindingStatement):
                    self._bind((statement.scope, statement.selector, statement.arg_name), statement.value)

    def _bind(self, key: tuple[str, str, str], value: Any) -> None:
        if key == ("", "profile_scope", "datasets") and isinstance(value, (list, tuple)):
            self.profile_datasets = tuple(map(str, value))
        elif key == ("teacher", "NetSpec", "name") and isinstance(value, str):  # every gin/pairs/ file names it so
            self.teacher_arch = value


def fits_profile(allowed: Sequence[str], dataset: str) -> bool:
    """The rule of a profile's scope: no datasets named means any dataset."""
    return not allowed or dataset in allowed


def profile_scope_message(profile: str, allowed: Sequence[str], dataset: str,
                          whose: str = "this experiment's dataset") -> str:
    """The one line refusing a profile meant for other datasets (here and in ``stages.check_profile``)."""
    return (f"profile {profile!r} is for {'/'.join(allowed)} experiments but {whose} is {dataset!r}: also set the "
            f"experiment, e.g. dvc exp run -S experiment={allowed[0]}_resnet34-resnet18 -S profile={profile} "
            f"(gin/experiments/{allowed[0]}_*.gin)")


def _check_profile_and_teacher(path: Path, params: dict[str, Any], gin_root: Path) -> None:
    facts = GinFacts(params, gin_root)
    if facts.dataset is not None and not fits_profile(facts.profile_datasets, facts.dataset):
        whose = f"the dataset of experiment {params['experiment']!r}"
        raise UserError(f"{path}: " + profile_scope_message(params["profile"], facts.profile_datasets, facts.dataset, whose))
    teacher = params["teacher"]
    if isinstance(teacher, dict) and facts.teacher_arch not in (None, teacher["arch"]):
        raise UserError(f"{path}: teacher.arch {teacher['arch']!r} is not the teacher of experiment "
                        f"{params['experiment']!r} ({facts.teacher_arch}): import a {facts.teacher_arch} file, or pick "
                        f"the experiment of a {teacher['arch']} pair")


# ---------------------------------------------------------------- the whole file

def read_params(path: Path, gin_root: Path = Path("gin")) -> dict[str, Any]:
    """Load and validate params.yaml (every key; see :data:`KEYS`), with its defaults filled in:
    ``teacher_seeds`` [0], ``study`` false, ``launcher`` "", ``teacher`` train."""
    path, gin_root = Path(path), Path(gin_root)
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path} is not a mapping of parameters: {_FIX}")
    for key in REQUIRED:
        if key not in raw:
            raise UserError(f"{path} has no {key!r}: add it ({_FIX})")
    _check_names(path, raw)
    teacher_seeds = _check_seeds(path, raw)
    unknown = sorted(map(str, set(raw) - set(KEYS)))
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r}: the keys are {', '.join(KEYS)} ({_FIX})")
    study, launcher = _check_switches(path, raw)
    teacher = _check_teacher(path, raw.get("teacher", "train"), teacher_seeds)
    params = {**raw, "teacher_seeds": teacher_seeds, "study": study, "launcher": launcher, "teacher": teacher}
    _check_gin_files(path, params, gin_root)
    _check_profile_and_teacher(path, params, gin_root)
    return params


def record(params: dict[str, Any]) -> dict[str, Any]:
    """The checked parameters as stages depend on them: an imported teacher carries its file's sha256,
    so replacing the file (same name) re-runs the teacher stage."""
    teacher = params["teacher"]
    if isinstance(teacher, dict):
        teacher = {**teacher, "sha256": io.sha256_of(Path(teacher["file"]))}
    return {key: params[key] for key in KEYS if key != "teacher"} | {"teacher": teacher}


def write_record(params: dict[str, Any], out: Path) -> None:
    """Write :func:`record` as sorted JSON (the same bytes for the same parameters), atomically."""
    io.write_json_atomically(Path(out), record(params))


def summary(params: dict[str, Any], path: Path, out: Path | None) -> str:
    teacher = params["teacher"]
    source = "trained" if teacher == "train" else f"imported from {teacher['file']}"
    cells = f"{len(params['teacher_seeds'])} teacher(s) ({source}) x {len(params['seeds'])} seed(s)"
    return (f"{path}: valid: experiment {params['experiment']}, profile {params['profile']}, {cells}, methods "
            f"{', '.join(params['methods'])}" + (f" -> {out}" if out is not None else ""))
