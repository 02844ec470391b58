"""Durable writes and digests: the one path every writer of the package goes through.

A file is written to a temporary name, flushed and fsync'ed, and renamed into place (then its
folder is fsync'ed), so neither a kill nor a power cut leaves a half-written file where a complete
one is expected. A write that fails (full disk, quota, permissions) ends with one line naming the
file, and what was there before is kept.

Destinations are checked before the work that fills them (:func:`check_file_destination`,
:func:`check_folder_destination`), and a folder a stage writes is held by one process at a time
(:func:`exclusive`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
from pathlib import Path
from typing import IO, Any, Callable, Iterator

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


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (``exists()`` is False below a file, too)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _folder_problem(path: Path) -> str | None:
    """Why files cannot be created at ``path`` (a file or folder that may not exist yet), or None."""
    return _problem_inside(Path(path).parent)


def _problem_inside(folder: Path) -> str | None:
    """Why files cannot be created inside ``folder`` (which may not exist yet), or None."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def check_file_destination(path: Path, name: str, example: str = "metrics.json") -> None:
    """Refuse, before the work that produces it, a file destination that cannot be written: a
    folder, a path below a file, or one inside a read-only folder. ``name`` is what the user calls
    it (``--metrics``, ``metrics file``); ``example`` the file name the message suggests inside a
    folder given instead. Nothing is created."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{name} {path} is a folder: give a file path, e.g. {path / example}")
    problem = _folder_problem(path)
    if problem:
        raise UserError(f"{name} {path} cannot be written: {problem}; choose another path or fix the folder")


def check_folder_destination(path: Path, name: str) -> None:
    """Refuse, before the work that fills it, a destination folder that cannot be written: an existing
    file, a path below a file, or a read-only folder. ``name`` is what the user calls it (``--out``).
    An existing folder is fine (the files written there replace their namesakes). Nothing is created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{name} {path} is a file, not a folder: give a folder path, or move the file away")
    problem = _problem_inside(path)
    if problem:
        raise UserError(f"{name} {path} cannot be written: {problem}; choose another path or fix the folder")


def lock_path(folder: Path) -> Path:
    """The lock file of ``folder``: beside it, since the folder itself is replaced or deleted whole."""
    folder = Path(os.path.abspath(folder))
    return folder.with_name(f".{folder.name}.lock")


def _make_parents(path: Path) -> list[Path]:
    """Create the missing folders above ``path``; return them, outermost first."""
    missing = []
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
    return list(reversed(missing))


def _holder(descriptor: int) -> str:
    """The pid written in a lock file, as the message shows it."""
    try:
        text = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "pid unknown"


def _acquire(lock: Path, refused: Callable[[str], UserError]) -> int:
    """An open descriptor of ``lock`` holding its exclusive flock, with this process's pid inside.

    A lock left by a dead process is free (the kernel drops a flock with its holder) and is taken
    over. The inode check covers a holder that removed the file between our open and our flock:
    we would then hold a file nobody else can see, so we retry on the path's new file."""
    import fcntl

    while True:
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(descriptor)
            os.close(descriptor)
            raise refused(holder) from None
        try:
            same = os.stat(lock).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()}\n".encode("ascii"), 0)
            return descriptor
        os.close(descriptor)


def _release(lock: Path, descriptor: int) -> None:
    """Remove the lock file while still holding it (see :func:`_acquire`), then let go."""
    try:
        if os.stat(lock).st_ino == os.fstat(descriptor).st_ino:
            os.unlink(lock)
    except FileNotFoundError:
        pass
    finally:
        os.close(descriptor)


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):  # innermost first
        try:
            folder.rmdir()
        except OSError:  # not empty (something was written there) or already gone
            pass


@contextlib.contextmanager
def exclusive(folder: Path, what: str, flag: str = "path") -> Iterator[None]:
    """Hold ``folder`` (which may not exist yet) for this process: a second process asking for it is
    refused at once, naming the holder's pid, instead of interleaving its writes with ours.

    The lock is ``.<name>.lock`` beside the folder; it is removed on the way out (success, error or
    Ctrl-C), and so are the folders above it that were created only to hold it and are still empty.
    ``what`` names the folder in messages (``output folder``), ``flag`` the option that chose it."""
    try:
        import fcntl  # noqa: F401
    except ImportError:  # Windows: no flock; one writer per folder is then up to the user
        yield
        return
    folder = Path(os.path.abspath(folder))
    lock = lock_path(folder)
    problem = _folder_problem(lock)
    if problem:
        raise UserError(f"{what} {folder} cannot be created: {problem}; choose another {flag}")
    try:
        created = _make_parents(lock)
    except OSError as exc:
        raise UserError(f"{what} {folder} cannot be created ({exc.strerror}): choose another {flag}") from None

    def refused(holder: str) -> UserError:
        return UserError(f"{what} {folder} is in use by another process ({holder}, lock {lock}): "
                         f"wait for it to finish, or choose another {flag}")

    try:
        try:
            descriptor = _acquire(lock, refused)
        except OSError as exc:
            raise UserError(f"{what} {folder} cannot be locked ({exc.strerror}; {lock}): choose another "
                            f"{flag}") from None
        try:
            yield
        finally:
            _release(lock, descriptor)
    finally:
        _remove_if_empty(created)
