"""Parsing gin files and bindings with one-line errors; the flat view of a config for MLflow."""

from __future__ import annotations

import hashlib
import os
import sys
import tokenize
from pathlib import Path
from typing import Any, Iterable, Iterator

import gin
from gin import config_parser

from repro.errors import UserError

# The largest seed a run accepts: NumPy's limit (2**32 - 1). Seeds derived from it (the teacher's
# data order uses seed * 100_003 + epoch; torchrun ranks add 1_000_003 per rank) stay inside the
# 64 bits torch.manual_seed takes, so a seed that passes here cannot overflow later.
MAX_SEED = 2**32 - 1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__


def _unparsable(bindings: list[str]) -> str | None:
    """The first binding that is not valid gin syntax on its own (to name it in the error)."""
    for binding in bindings:
        try:
            list(config_parser.ConfigParser(binding, gin.config.ParserDelegate(skip_unknown=True)))
        except (SyntaxError, tokenize.TokenError):
            return binding
    return None


def _check_exists(path: Path) -> None:
    """A named gin file must be a file: say so, with what the folder holds, when it is not."""
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.gin"))
        hint = f", e.g. {path}/{inside[0]} (it holds: {', '.join(inside)})" if inside else ""
        raise UserError(f"gin file {path} is a folder, not a file: pass a .gin file{hint}")
    if not path.is_file():
        siblings = sorted(p.stem for p in path.parent.glob("*.gin")) if path.parent.is_dir() else []
        hint = f"; {path.parent}/ has: {', '.join(siblings)}" if siblings else ""
        raise UserError(f"gin file {path} does not exist (check the name, e.g. a method or profile in params.yaml){hint}")


def _add_search_path(path: Path) -> None:
    """``include 'gin/x.gin'`` lines resolve against the project root holding the gin/ folder."""
    for parent in path.resolve().parents:
        if parent.name == "gin":
            if str(parent.parent) not in gin.config._LOCATION_PREFIXES:  # else it grows every parse
                gin.add_config_file_search_path(str(parent.parent))
            return


def _locate_include(name: str) -> Path | None:
    """Where gin will find an included file: the first search path holding it as a file (gin skips
    folders and tries the next path; gin has no public reader of its search paths)."""
    prefixes = [""] if os.path.isabs(name) else gin.config._LOCATION_PREFIXES
    return next((Path(prefix, name) for prefix in prefixes if Path(prefix, name).is_file()), None)


def _read_text(path: Path, where: str = "") -> str:
    """The text of gin file ``path``; ``where`` says who included it. gin itself would report an
    unreadable file as a spelling problem and a non-UTF-8 one as a codec error."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"gin file {path}{where} cannot be read ({reason}): make it readable (e.g. chmod u+r {path}) "
                        "or pass another file") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserError(f"gin file {path}{where} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}): "
                        "save it as UTF-8") from None


class _Names(config_parser.ParserDelegate):
    """Reads statements without resolving ``@references`` or ``%MACROS`` (gin's own delegate builds
    each reference: most of a parse's time). Only includes and binding names are wanted here."""

    def configurable_reference(self, scoped_configurable_name: str, evaluate: bool) -> str:
        return f"@{scoped_configurable_name}"

    def macro(self, macro_name: str) -> str:
        return f"%{macro_name}"


def _statements(text: str) -> list[Any]:
    """The statements of gin ``text``; none if it does not parse (gin's parse then names file and line)."""
    try:
        return list(config_parser.ConfigParser(text, _Names()))
    except (SyntaxError, tokenize.TokenError, ValueError):
        return []


def _walk(path: Path, chain: tuple[Path, ...] = (), where: str = "") -> Iterator[Any]:
    """Every statement of gin file ``path`` and, depth first, of the files it includes, read as gin
    will read them. A file that cannot be read and files that include each other (gin recurses until
    Python's stack runs out) become one line."""
    chain = (*chain, path)
    for statement in _statements(_read_text(path, where)):
        yield statement
        if not isinstance(statement, config_parser.IncludeStatement):
            continue
        line = f" (included by {path}, line {statement.location.line_num})"
        included = _locate_include(statement.filename)
        if included is None:
            raise UserError(f"gin file {statement.filename}{line} does not exist: fix the include line")
        if included.resolve() in {p.resolve() for p in chain}:
            loop = " -> ".join(str(p) for p in (*chain, included))
            raise UserError(f"gin files include each other in a loop ({loop}): remove one of these include lines")
        yield from _walk(included, chain, line)


def _key(statement: Any) -> str:
    """``scope/Configurable.param`` of a binding statement; a macro's bare name."""
    scope = f"{statement.scope}/" if statement.scope else ""
    return f"{scope}{statement.selector}.{statement.arg_name}" if statement.arg_name else f"{scope}{statement.selector}"


def _bound(key: str) -> tuple[str, Any]:
    """The value bound to ``key`` (``scope/Configurable.param``, or a macro's name) and the name the
    user bound it under: a ``%MACRO`` value is followed to the macro's own value."""
    name, value = key, gin.query_parameter(key if "." in key else f"%{key}")
    for _ in range(100):  # a chain of macros; gin does not refuse a circle of them
        if not (isinstance(value, gin.config.ConfigurableReference) and repr(value).startswith("%")):
            break
        name, value = repr(value)[1:], gin.query_parameter(repr(value))
    return name, value


def _is_seed(key: str) -> bool:
    name = key.rsplit(".", 1)[-1].rsplit("/", 1)[-1].lower()
    return name == "seed" or name.endswith("_seed")


def _check_seeds(keys: Iterable[str]) -> None:
    """Every bound seed (``SEED``, ``*.seed``, ``*_seed``) is an integer in [0, MAX_SEED], as
    params.yaml's seeds are: torch would wrap -1 silently and fail on 1.5, 'x' or 2**70 deep inside a stage."""
    checked: set[str] = set()
    for key in sorted(filter(_is_seed, keys)):
        try:
            name, value = _bound(key)
        except ValueError:  # bound under a name gin cannot query back (e.g. a skipped unknown configurable)
            continue
        if name in checked or isinstance(value, gin.config.ConfigurableReference):
            continue
        checked.add(name)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
            raise UserError(f"{name} = {value!r} is not a seed: bind an integer from 0 to {MAX_SEED} (as params.yaml's "
                            f"seeds), e.g. --bind {name}=1")


def parse(files: Iterable[str | Path], bindings: Iterable[str] = ()) -> None:
    """Clear gin, then parse ``files`` in order and apply ``bindings`` (``NAME=VALUE``) last.

    The names must be registered first (``import repro.configurables``; the CLI does it). Files that
    cannot be read, include loops and out-of-range seeds end as one-line :class:`UserError` s."""
    gin.clear_config()
    files = [Path(f) for f in files]
    for path in files:
        _check_exists(path)
        _add_search_path(path)
    bindings = list(bindings)
    statements = [statement for path in files for statement in _walk(path)]
    statements += [statement for binding in bindings for statement in _statements(binding)]
    try:
        gin.parse_config_files_and_bindings([str(f) for f in files], bindings, finalize_config=False)
    except (SyntaxError, tokenize.TokenError) as exc:
        culprit = _unparsable(bindings)
        if culprit is not None:
            where = f" in --bind {culprit!r}"
        else:
            where = f" ({exc.filename}, line {exc.lineno})" if isinstance(exc, SyntaxError) and exc.filename else ""
        reason = exc.args[0] if isinstance(exc, tokenize.TokenError) else _first_line(exc)
        raise UserError(f"gin syntax error{where}: {reason}; fix the gin file or --bind value") from None
    except (ValueError, KeyError, TypeError, IOError) as exc:
        if "repro.configurables" not in sys.modules:  # a library caller that registered no names
            raise UserError(f"gin config error: {_first_line(exc)}; import repro.configurables before parsing "
                            "(it registers every gin name; the CLI does it)") from None
        raise UserError(f"gin config error: {_first_line(exc)}; check the spelling against `repro names`") from None
    _check_seeds({_key(statement) for statement in statements if isinstance(statement, config_parser.BindingStatement)})


def flat_bindings(config_text: str) -> dict[str, str]:
    """``{'scope/Configurable.param': 'value'}`` for every binding in a gin config string."""
    flat: dict[str, str] = {}
    parser = config_parser.ConfigParser(config_text, gin.config.ParserDelegate(skip_unknown=True))
    for statement in parser:
        if isinstance(statement, config_parser.BindingStatement):
            flat[_key(statement)] = repr(statement.value)  # references and macros print as @Name / %NAME
    return flat


def fingerprint(*parts: str) -> str:
    """A digest identifying a run's configuration (for safe resume)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()
