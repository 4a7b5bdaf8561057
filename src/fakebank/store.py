"""Where a bank lives: a local folder (bank.py, the default) or Milvus (milvus_bank.py).

Sits between the bank implementations and api: api opens readers and writers through a store and never
names a folder or a collection itself. Chosen by a store spec (`--store` / FAKEBANK_STORE):

    (none), "folder"                 the bank folder (--bank / FAKEBANK_BANK), unchanged behaviour
    milvus-lite:PATH[#NAME]          a Milvus Lite file (tests, demos; one process at a time per file)
    milvus://HOST:PORT[/NAME]        a Milvus server or cluster (http; milvus+https:// for TLS), token in
                                     FAKEBANK_MILVUS_TOKEN ("user:password" or an API key)

NAME prefixes the bank's collections (default "fakebank"). Both stores offer the same surface: `open()`
(a reader: bank.Bank or milvus_bank.MilvusBank), `snapshot()` (the latest, reused while unchanged),
`writer(...)` (a context manager: bank.BankWriter or milvus_bank.MilvusWriter), `read_manifest()`,
`exists()`, `location`, `info_storage()`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from urllib.parse import urlsplit

from fakebank.bank import MANIFEST, Bank, BankWriter, check_bank_path, read_manifest
from fakebank.errors import ReadOnlyError, UsageError

STORE_ENV = "FAKEBANK_STORE"
FOLDER = "folder"
DEFAULT_MILVUS_PORT = 19530


class FolderStore:
    """The bank folder (bank.py): immutable segments, a manifest, one writer at a time (flock)."""

    kind = FOLDER
    spec = FOLDER
    shared_readers = True  # any process may read a folder while one writes

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        check_bank_path(self.path)  # before a model is loaded for it
        self.write_lock = threading.Lock()  # one writer per process; the bank's flock covers processes
        self._lock = threading.Lock()
        self._snapshot: tuple[tuple | None, Bank] | None = None

    @property
    def location(self) -> str:
        return str(self.path)

    def exists(self) -> bool:
        return (self.path / MANIFEST).is_file()

    def read_manifest(self) -> dict:
        return read_manifest(self.path)

    def open(self) -> Bank:
        """The latest commit. A bank of format 1 is migrated first (once, under the writer's lock): read as
        is it would rebuild every index in memory in every process. A read-only folder is read as is."""
        if read_manifest(self.path).get("format_version") == 1:
            try:
                with self.write_lock, self.writer(create=False):
                    pass  # the writer migrates on entry
            except (PermissionError, ReadOnlyError):
                pass
        return Bank.open(self.path)

    def _key(self) -> tuple | None:
        try:
            st = (self.path / MANIFEST).stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def snapshot(self) -> Bank:
        """The latest committed bank, reopened only when the manifest changed; never waits for a writer."""
        key = self._key()
        current = self._snapshot
        if current is not None and current[0] == key:
            return current[1]
        with self._lock:
            if self._snapshot is None or self._snapshot[0] != key:
                self._snapshot = (key, self.open())
            return self._snapshot[1]

    def held(self) -> Bank | None:
        """The snapshot this process holds (a writer reuses it when it is still the latest commit)."""
        return self._snapshot[1] if self._snapshot else None

    def publish(self, bank: Bank) -> None:
        self._snapshot = (self._key(), bank)

    def writer(self, *, model_info: dict | None = None, embedding_dim: int | None = None, create: bool = True,
               snapshot: Bank | None = None) -> BankWriter:
        return BankWriter(self.path, model_info=model_info, embedding_dim=embedding_dim, create=create,
                          snapshot=snapshot)

    def discard_if_empty(self) -> bool:
        """Undo the creation of a bank that got no item (an `add` whose every input failed), so that its
        model is not pinned by a bank that holds nothing. The folder and its lock file stay: deleting a
        lock file another writer waits on would let two writers in."""
        with self.write_lock, self.writer(create=False) as w:
            if len(w.bank) or w.bank.manifest["segments"] or w.bank.manifest.get("deltas"):
                return False
            (self.path / MANIFEST).unlink()
        return True

    def info_storage(self, manifest: dict) -> dict:
        segments = manifest["segments"]
        return {"storage": {"segments": len(segments), "largest_segment": max((s["rows"] for s in segments), default=0),
                            "delta_files": len(manifest.get("deltas", []))},
                "bytes_on_disk": folder_bytes(self.path)}


def folder_bytes(path: Path) -> int:
    """Bytes of the files in a folder; a file a writer sweeps while we count is skipped, not an error."""
    total = 0
    for entry in os.scandir(path):
        try:
            if entry.is_file():
                total += entry.stat().st_size
        except FileNotFoundError:
            continue
    return total


def open_store(spec: str | None, bank_path: str | os.PathLike):
    """The store a spec names (None: FAKEBANK_STORE, else the folder at `bank_path`)."""
    spec = spec if spec is not None else os.environ.get(STORE_ENV)
    if not spec or spec == FOLDER:
        return FolderStore(bank_path)
    from fakebank.milvus_bank import DEFAULT_COLLECTION, TOKEN_ENV, MilvusStore

    if spec.startswith("milvus-lite:"):
        path, _, name = spec[len("milvus-lite:"):].partition("#")
        if not path:
            raise UsageError(f"--store {spec}: name the Milvus Lite file, e.g. milvus-lite:bank.db")
        return MilvusStore(str(Path(path).resolve()), name or DEFAULT_COLLECTION)
    if spec.startswith(("milvus://", "milvus+https://", "milvus+http://")):
        url = urlsplit(spec)
        if not url.hostname:
            raise UsageError(f"--store {spec}: name the server, e.g. milvus://localhost:19530/fakebank")
        scheme = "https" if url.scheme == "milvus+https" else "http"
        name = url.path.strip("/") or DEFAULT_COLLECTION
        return MilvusStore(f"{scheme}://{url.hostname}:{url.port or DEFAULT_MILVUS_PORT}", name,
                           token=os.environ.get(TOKEN_ENV))
    raise UsageError(f"unknown store {spec!r}: use {FOLDER}, milvus-lite:FILE[#NAME] or milvus://HOST:PORT[/NAME]")
