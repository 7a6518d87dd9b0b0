"""Atomic writes: a reader never sees a half-written file, and a failed write leaves no trace.

Every writer in :mod:`dgeo.io` writes to a temporary sibling (``.<name>.<random>.tmp`` in the
same folder, so that the final rename stays on one file system) and moves it into place with
:func:`os.replace` only once everything was written. If writing raises, the temporary is removed
and the old file, if any, is left untouched.

Temporaries are created with the default permissions (``0o666`` / ``0o777`` less the umask), not
the ``0o600`` of :mod:`tempfile`, so that results written for others stay readable.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from dgeo.errors import InputError


def _temp_sibling(path: Path) -> Path:
    """A fresh name ``.<name>.<random>.tmp`` next to ``path``."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "w", *, fsync: bool = True, **kwargs: Any
) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; move it onto ``path`` on success.

    Args:
        path: the final file; its folder is created if missing.
        mode: ``"w"`` (text, ``newline="\\n"`` and UTF-8 unless given) or ``"wb"`` (binary).
        fsync: flush the data to disk before the rename, so that a crash cannot leave an empty
            file under the final name.
        **kwargs: passed to :func:`open`.
    Yields:
        the open file object. If the ``with`` block raises, the temporary is deleted, ``path`` is
        left as it was and the exception propagates.
    """
    if mode not in ("w", "wb"):
        raise InputError(f"atomic_open supports modes 'w' and 'wb', got {mode!r}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    if mode == "w":
        kwargs.setdefault("encoding", "utf-8")
        kwargs.setdefault("newline", "\n")
    f = open(tmp, mode.replace("w", "x"), **kwargs)
    try:
        yield f
        f.flush()
        if fsync:
            os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except BaseException:
        f.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8, ``\\n`` line ends); returns the path."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_write_lines(path: str | os.PathLike, lines: Iterable[str]) -> Path:
    """Write ``lines`` (each without its ``\\n``) to ``path`` atomically.

    ``lines`` may be a lazy iterable: it is consumed while the temporary file is written, so an
    exception raised by it leaves ``path`` untouched.
    """
    with atomic_open(path, "w") as f:
        for line in lines:
            f.write(line)
            f.write("\n")
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> Path:
    """Write raw bytes to ``path`` atomically; returns the path."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike, *, replace_names: Iterable[str] = ()
) -> Iterator[Path]:
    """Fill a temporary folder, then move it into place as ``path``.

    If ``path`` does not exist, the temporary folder is renamed to it (one atomic rename). If it
    exists, each new file is moved into it with :func:`os.replace` (each file atomic, the set
    not), other files already there are kept, except those named in ``replace_names`` that the
    new content does not contain: these stale files are deleted (e.g. a text model's
    ``cameras.txt`` when a binary model is written into the same folder).

    Args:
        path: the final folder.
        replace_names: file names inside ``path`` that belong to the content being written.
    Yields:
        the temporary folder to write into. If the ``with`` block raises, the temporary folder
        is deleted, ``path`` is left as it was, and the exception propagates.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} exists and is not a folder; pass a folder path.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    os.mkdir(tmp)
    try:
        yield tmp
        new = sorted(p.name for p in tmp.iterdir())
        moved = False
        if not path.exists():
            try:
                os.replace(tmp, path)
                moved = True
            except OSError:  # created concurrently: fall back to per-file replacement
                moved = False
        if not moved:
            for name in new:
                if (tmp / name).is_dir():
                    raise InputError(f"atomic_directory cannot merge sub-folder {name!r}.")
                os.replace(tmp / name, path / name)
            for name in set(replace_names) - set(new):
                with contextlib.suppress(FileNotFoundError):
                    (path / name).unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
