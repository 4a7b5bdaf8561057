"""Files a command writes (a report, an overlay, a hash list): refused before the work when they cannot be
written, and a failure at the end named as the user's path, not an OSError traceback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fakebank.errors import UsageError


def check_output_file(path: str | os.PathLike, option: str, *, make_parents: bool = True,
                      example: str = "out.html") -> Path:
    """`path` as a Path, if a file can be written there (`make_parents`: missing folders will be made)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; name a file in it, e.g. {path / example}")
    if (path.exists() or path.is_symlink()) and (not path.resolve().is_file() or _special(path)):
        # written whole beside it, then moved into place: over /dev/stdout that would replace the device link
        raise UsageError(f"{option} {path} is not a regular file; name a file to write")
    blocker = next((a for a in path.parents if a.exists() and not a.is_dir()), None)
    if blocker is not None:
        raise UsageError(f"{option} {path}: {blocker} is a file, not a folder")
    if not make_parents and not path.parent.is_dir():
        raise UsageError(f"{option} {path}: folder {path.parent} does not exist; create it or name a file in an "
                         "existing one")
    existing = next(a for a in (path.parent, *path.parent.parents) if a.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: folder {existing} is not writable; name a file in a folder you can "
                         "write to")
    return path


def _special(path: Path) -> bool:
    return any(p.parts[:2] in (("/", "dev"), ("/", "proc")) for p in (path.absolute(), path.resolve()))


@contextmanager
def writing(path: Path, option: str) -> Iterator[None]:
    """Around the write of a checked `path`: its missing folders are made, and a failure (a full disk, a
    path that refuses files) is named as the user's option and path."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield
    except OSError as e:
        raise UsageError(f"{option} {path}: could not be written ({e.strerror or e}); name a file in a folder you "
                         "can write to, with free space") from e
