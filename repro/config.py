"""Parsing gin files and bindings with one-line errors; the flat view of a config for MLflow."""

from __future__ import annotations

import hashlib
import sys
import tokenize
from pathlib import Path
from typing import Iterable

import gin

from repro.errors import UserError


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__


def _unparsable(bindings: list[str]) -> str | None:
    """The first binding that is not valid gin syntax on its own (to name it in the error)."""
    from gin import config_parser

    for binding in bindings:
        try:
            list(config_parser.ConfigParser(binding, gin.config.ParserDelegate(skip_unknown=True)))
        except (SyntaxError, tokenize.TokenError):
            return binding
    return None


def parse(files: Iterable[str | Path], bindings: Iterable[str] = ()) -> None:
    """Clear gin, then parse ``files`` in order and apply ``bindings`` (``NAME=VALUE``) last.

    The names must be registered first (``import repro.configurables``; the CLI does it)."""
    gin.clear_config()
    files = [Path(f) for f in files]
    for path in files:
        if not path.is_file():
            siblings = sorted(p.stem for p in path.parent.glob("*.gin")) if path.parent.is_dir() else []
            hint = f"; {path.parent}/ has: {', '.join(siblings)}" if siblings else ""
            raise UserError(f"gin file {path} does not exist (check the name, e.g. a method or profile in params.yaml){hint}")
        # `include 'gin/x.gin'` lines resolve against the project root holding the gin/ folder.
        for parent in path.resolve().parents:
            if parent.name == "gin":
                gin.add_config_file_search_path(str(parent.parent))
                break
    bindings = list(bindings)
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


def flat_bindings(config_text: str) -> dict[str, str]:
    """``{'scope/Configurable.param': 'value'}`` for every binding in a gin config string."""
    from gin import config_parser

    flat: dict[str, str] = {}
    parser = config_parser.ConfigParser(config_text, gin.config.ParserDelegate(skip_unknown=True))
    for statement in parser:
        if isinstance(statement, config_parser.BindingStatement):
            scope = f"{statement.scope}/" if statement.scope else ""
            key = f"{scope}{statement.selector}.{statement.arg_name}" if statement.arg_name else f"{scope}{statement.selector}"
            flat[key] = repr(statement.value)  # references and macros print as @Name / %NAME
    return flat


def fingerprint(*parts: str) -> str:
    """A digest identifying a run's configuration (for safe resume)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()
