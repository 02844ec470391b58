"""Durable writes and digests: the one path every writer of the package goes through.

A file is written to a temporary name, flushed and fsync'ed, and renamed into place (then its
folder is fsync'ed), so neither a kill nor a power cut leaves a half-written file where a complete
one is expected. A write that fails (full disk, quota, permissions) ends with one line naming the
file, and what was there before is kept.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from pathlib import Path
from typing import IO, Any

from repro.errors import UserError


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _open_for_writing(path: Path) -> IO[bytes]:
    """Every file this module writes is opened here (a test wraps it to simulate a full disk)."""
    return open(path, "wb")


def write_durably(path: Path, payload: bytes | memoryview) -> None:
    """Write ``payload`` to ``path`` and fsync it. Not atomic by itself: callers write to a
    temporary name or into a temporary folder and rename."""
    with _open_for_writing(path) as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_path(path: Path) -> None:
    """fsync a file written by someone else, or a folder (so a rename in it survives a power cut)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. folders cannot be opened on Windows; nothing more can be done there
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some filesystems refuse fsync on folders
    finally:
        os.close(descriptor)


def errno_of(exc: BaseException) -> int | None:
    if isinstance(exc, OSError):
        return exc.errno
    found = re.search(r"os error (\d+)", str(exc))  # Rust writers (safetensors) report "(os error 28)"
    return int(found.group(1)) if found else None


def write_failed(path: Path, exc: BaseException, kept: str) -> UserError:
    """The one-line error for a failed write of ``path``."""
    if errno_of(exc) in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"no space left on device while writing {path}; free space and re-run ({kept})")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc).strip() or type(exc).__name__)
    return UserError(f"could not write {path} ({reason}); fix the cause and re-run ({kept})")


def is_write_error(exc: BaseException) -> bool:
    from safetensors import SafetensorError

    return isinstance(exc, OSError) or (isinstance(exc, SafetensorError) and errno_of(exc) is not None)


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8): complete or not at all (the old file is kept). Reports are written so."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_durably(partial, text.encode("utf-8"))
        os.replace(partial, path)
        fsync_path(path.parent)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        kept = "the previous file is kept" if path.exists() else "nothing was written"
        raise write_failed(path, exc, kept) from None


def write_json_atomically(path: Path, record: Any) -> None:
    """Write ``record`` as sorted, indented JSON: complete or not at all (the old file is kept)."""
    write_text_atomically(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
