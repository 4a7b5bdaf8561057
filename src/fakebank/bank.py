"""The bank folder: a Parquet items table (source of truth), derived FAISS indexes and a manifest.

Sits after embed and before decide/dedup/campaigns; it never imports torch or the model.

On disk (DESIGN §1.4)::

    manifest.json          the commit point: names every live file, the model identity, counts
    seg-000007.parquet     items table, as append-only segments (a relabel/remove compacts them into one)
    cls-000007.faiss …     derived indexes, written when a writer closes; rebuilt or caught up on open
    bank.lock              one writer at a time (flock; released by the kernel if the writer dies)

A commit writes new files beside the old ones (tmp, fsync, rename), then the manifest the same way.
A crash at any instant leaves the previous manifest in place, which names only complete files; files no
manifest names are swept by the next writer. Readers take no lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fakebank import index as faiss_index
from fakebank.errors import BankError, UsageError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK_FILE = "bank.lock"
LABELS = ("fake", "real", "unknown")
DEFAULT_BANK = "indexes/default"
BANK_ENV = "FAKEBANK_BANK"
DEFAULT_LOCK_TIMEOUT_S = 30.0
VECTOR_KINDS = ("cls", "patch")
MAX_SEGMENTS = 64  # more append-only segments than this are compacted into one
PDQ_BYTES = 32
_OWNED_FILE = re.compile(
    r"^(seg-\d+\.parquet|campaigns-\d+\.parquet|(cls|patch|pdq|pdq_trim|local)-\d+\.faiss|.*\.tmp)$")
# Near-duplicate signals (dedup.py) beyond `pdq`: the PDQ hashes of de-bordered images and the ORB
# descriptors of every item, each in a derived binary index. A local descriptor's FAISS id is
# item_id << LOCAL_ID_BITS | its rank within the item.
DEDUP_INDEX_KINDS = ("pdq_trim", "local")
BINARY_KINDS = ("pdq", *DEDUP_INDEX_KINDS)
LOCAL_ID_BITS = 10
PDQ_DIHEDRAL_BYTES = 7 * PDQ_BYTES  # the 7 rotated/mirrored hashes after the stored one
# Computed campaign assignments (`fakebank campaigns`), a sidecar the manifest names under "campaigns";
# the analyst's `campaign` column of the items table is never written by clustering.
CAMPAIGNS_SCHEMA = pa.schema([("id", pa.int64()), ("campaign", pa.string()), ("origin", pa.string())])


def default_bank_path() -> Path:
    return Path(os.environ.get(BANK_ENV) or DEFAULT_BANK)


def items_schema(dim: int) -> pa.Schema:
    """The items table, declared once."""
    return pa.schema(
        [
            ("id", pa.int64()),
            ("sha256", pa.string()),
            ("path", pa.string()),
            ("label", pa.string()),
            ("source", pa.string()),
            ("campaign", pa.string()),
            ("note", pa.string()),
            ("added_at", pa.timestamp("us", tz="UTC")),
            ("p_fake", pa.float32()),
            ("logit", pa.float32()),
            ("pdq", pa.binary(PDQ_BYTES)),
            ("pdq_quality", pa.int16()),
            ("cls", pa.list_(pa.float32(), dim)),
            ("patch", pa.list_(pa.float32(), dim)),
            ("width", pa.int32()),
            ("height", pa.int32()),
            # near-duplicate signals (signals.py); null for rows added without them
            ("pdq_dihedral", pa.binary(PDQ_DIHEDRAL_BYTES)),
            ("pdq_trim", pa.binary(PDQ_BYTES)),
            ("pdq_trim_quality", pa.int16()),
            ("local", pa.binary()),
        ]
    )


@dataclass(frozen=True)
class NewItem:
    sha256: str
    path: str
    label: str
    p_fake: float
    logit: float
    pdq: bytes
    pdq_quality: int
    cls: np.ndarray
    patch: np.ndarray
    width: int
    height: int
    source: str | None = None
    campaign: str | None = None
    note: str | None = None
    pdq_dihedral: bytes | None = None  # PdqHash.dihedral[1:], concatenated
    pdq_trim: bytes | None = None  # PDQ of the de-bordered image, when it differs from the whole
    pdq_trim_quality: int | None = None
    local: bytes | None = None  # LocalFeatures.to_bytes()


def check_label(label: str) -> str:
    if label not in LABELS:
        raise UsageError(f"label must be one of {', '.join(LABELS)}, not {label!r}")
    return label


class Bank:
    """A consistent read-only snapshot of a bank folder."""

    def __init__(self, path: Path, manifest: dict, table: pa.Table) -> None:
        self.path = path
        self.manifest = manifest
        self.table = table
        self.dim = int(manifest["embedding_dim"])
        self.ids = table.column("id").to_numpy().astype(np.int64)
        self._row_of = {int(i): r for r, i in enumerate(self.ids)}
        self._by_sha = dict(zip(table.column("sha256").to_pylist(), self.ids.tolist()))
        self.vectors = {kind: _vectors(table, kind, self.dim) for kind in VECTOR_KINDS}
        self.pdq_codes = _pdq_codes(table)
        self.pdq_quality = table.column("pdq_quality").to_numpy().astype(np.int16)
        self.labels = np.asarray(table.column("label").to_pylist(), dtype=object)
        self._indexes: dict[str, object] = {}

    def with_appended(self, manifest: dict, new: pa.Table, *, copy_indexes: bool = False) -> "Bank":
        """This snapshot plus appended rows, reusing what is already derived (indexes included).

        Indexes are moved to the new snapshot, or copied when other threads may still search this one.
        """
        bank = Bank.__new__(Bank)
        bank.path, bank.manifest, bank.dim = self.path, manifest, self.dim
        bank.table = pa.concat_tables([self.table, new])
        new_ids = new.column("id").to_numpy().astype(np.int64)
        bank.ids = np.concatenate([self.ids, new_ids])
        start = len(self.ids)
        bank._row_of = dict(self._row_of)
        bank._row_of.update({int(i): start + r for r, i in enumerate(new_ids)})
        bank._by_sha = dict(self._by_sha)
        bank._by_sha.update(zip(new.column("sha256").to_pylist(), new_ids.tolist()))
        bank.vectors = {k: np.concatenate([self.vectors[k], _vectors(new, k, self.dim)]) for k in VECTOR_KINDS}
        bank.pdq_codes = np.concatenate([self.pdq_codes, _pdq_codes(new)])
        bank.pdq_quality = np.concatenate([self.pdq_quality, new.column("pdq_quality").to_numpy().astype(np.int16)])
        bank.labels = np.concatenate([self.labels, np.asarray(new.column("label").to_pylist(), dtype=object)])
        if copy_indexes:
            bank._indexes = {k: faiss_index.clone(idx) for k, idx in self._indexes.items()}
        else:
            bank._indexes, self._indexes = self._indexes, {}
        for kind, idx in bank._indexes.items():
            bank._add_rows(kind, idx, start)
        return bank

    # -- opening ----------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike, *, retries: int = 5) -> "Bank":
        path = Path(path)
        for attempt in range(retries):
            manifest = read_manifest(path)
            try:
                table = _read_segments(path, manifest)
            except FileNotFoundError:
                # A writer compacted and swept the segments between our manifest read and now: reread.
                if attempt == retries - 1:
                    raise BankError(
                        f"{path}: a segment named by the manifest is missing; the bank is damaged. "
                        "Restore the folder from a backup"
                    ) from None
                time.sleep(0.05)
                continue
            bank = cls(path, manifest, table)
            bank._check_invariants()
            return bank
        raise AssertionError("unreachable")

    def _check_invariants(self) -> None:
        expected = self.manifest["counts"]["items"]
        if len(self.ids) != expected:
            raise BankError(
                f"{self.path}: the manifest counts {expected} items but its segments hold {len(self.ids)}; "
                "the bank is damaged — restore it from a backup"
            )
        if len(self._row_of) != len(self.ids):
            raise BankError(f"{self.path}: duplicate item ids in the table; restore the bank from a backup")

    # -- lookups ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.ids)

    def id_of_sha256(self, sha256: str) -> int | None:
        return self._by_sha.get(sha256)

    def has(self, item_id: int) -> bool:
        return int(item_id) in self._row_of

    def row(self, item_id: int) -> int:
        try:
            return self._row_of[int(item_id)]
        except KeyError:
            raise UsageError(f"no item with id {item_id} in {self.path}; see `fakebank info`") from None

    def item(self, item_id: int) -> dict:
        """An item's metadata (no vectors), JSON-friendly."""
        r = self.row(item_id)
        rec = {c: self.table.column(c)[r].as_py() for c in _META_COLUMNS}
        rec["added_at"] = rec["added_at"].isoformat() if rec["added_at"] else None
        rec["pdq"] = rec["pdq"].hex() if rec["pdq"] else None
        return rec

    def campaign_assignments(self) -> pa.Table | None:
        """The stored campaign assignments (id, campaign, origin) of this snapshot; None before any run.

        Rows of items removed since may remain: callers keep the ids the bank still has.
        """
        entry = self.manifest.get("campaigns")
        if not entry or not entry.get("file"):
            return None
        try:
            return pq.read_table(self.path / entry["file"], schema=CAMPAIGNS_SCHEMA)
        except FileNotFoundError:
            raise BankError(f"{self.path}: the campaign assignments changed while being read; retry") from None

    def index(self, kind: str):
        """The FAISS index for `cls`, `patch` or `pdq`: loaded, caught up, or rebuilt from the table."""
        if kind not in self._indexes:
            self._indexes[kind] = self._load_or_build_index(kind)
        return self._indexes[kind]

    def search(self, kind: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return faiss_index.search(self.index(kind), queries, min(k, max(1, len(self))))

    def pdq_within(self, query_codes: np.ndarray, max_distance: int) -> list[list[tuple[int, int]]]:
        return faiss_index.binary_within(self.index("pdq"), query_codes, max_distance)

    # -- derived indexes --------------------------------------------------------------------------

    def _load_or_build_index(self, kind: str):
        entry = self.manifest.get("indexes", {}).get(kind)
        segments = self.manifest["segments"]
        if entry and (self.path / entry["file"]).is_file():
            covered = entry["segments"]
            if covered == segments[: len(covered)]:
                idx = faiss_index.load(self.path / entry["file"], binary=kind in BINARY_KINDS)
                covered_rows = sum(s["rows"] for s in covered)
                if idx.ntotal == entry.get("ntotal", covered_rows):
                    self._add_rows(kind, idx, covered_rows)
                    return idx
        return self.build_index(kind)

    def build_index(self, kind: str):
        if kind == "pdq":
            return faiss_index.build_binary(self.pdq_codes, self.ids)
        if kind == "pdq_trim":
            return faiss_index.build_binary(*_pdq_trim_rows(self.table))
        if kind == "local":
            return faiss_index.build_local(*_local_rows(self.table))
        factory = faiss_index.choose_factory(len(self), self.dim)
        return faiss_index.build(factory, self.vectors[kind], self.ids)

    def _add_rows(self, kind: str, idx, start: int) -> None:
        if start >= len(self):
            return
        if kind == "pdq":
            idx.add_with_ids(self.pdq_codes[start:], self.ids[start:])
        elif kind in DEDUP_INDEX_KINDS:
            codes, ids = (_pdq_trim_rows if kind == "pdq_trim" else _local_rows)(self.table.slice(start))
            if len(ids):
                idx.add_with_ids(codes, ids)
        else:
            faiss_index.add(idx, self.vectors[kind][start:], self.ids[start:])


_META_COLUMNS = ("id", "sha256", "path", "label", "source", "campaign", "note", "added_at", "p_fake",
                 "logit", "pdq", "pdq_quality", "width", "height")


def _pdq_trim_rows(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(codes [n, 32], item ids) of the rows that have a de-bordered PDQ hash."""
    values = table.column("pdq_trim").to_pylist()
    keep = [r for r, v in enumerate(values) if v is not None]
    ids = table.column("id").to_numpy()[keep].astype(np.int64) if keep else np.zeros(0, np.int64)
    codes = np.frombuffer(b"".join(values[r] for r in keep), np.uint8).reshape(-1, PDQ_BYTES).copy()
    return codes, ids


def _local_rows(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(descriptors [n, 32], ids item_id << LOCAL_ID_BITS | rank) of every row's local features."""
    from fakebank.signals import LocalFeatures  # cv2 only where local features are read

    codes, ids = [], []
    for item_id, blob in zip(table.column("id").to_pylist(), table.column("local").to_pylist()):
        feats = LocalFeatures.from_bytes(blob)
        n = min(len(feats), 1 << LOCAL_ID_BITS)
        if n:
            codes.append(feats.desc[:n])
            ids.append((np.int64(item_id) << LOCAL_ID_BITS) | np.arange(n, dtype=np.int64))
    if not codes:
        return np.zeros((0, PDQ_BYTES), np.uint8), np.zeros(0, np.int64)
    return np.ascontiguousarray(np.concatenate(codes)), np.concatenate(ids)


def read_manifest(path: Path) -> dict:
    mpath = path / MANIFEST
    if not mpath.is_file():
        if path.is_dir() and any(path.iterdir()):
            raise BankError(f"{path}: not a fakebank bank (no {MANIFEST}); pick another --bank")
        raise BankError(f"no bank at {path}; create one with `fakebank add IMAGES --bank {path}`")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BankError(f"{mpath}: unreadable ({e}); restore the bank from a backup") from e
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BankError(
            f"{path}: bank format {manifest.get('format_version')} but this fakebank reads {FORMAT_VERSION}; "
            "use the fakebank version that wrote it"
        )
    return manifest


def check_model(manifest: dict, model_info: dict, path: Path) -> None:
    """Refuse embeddings from a model other than the one the bank was built with."""
    have = manifest.get("model")
    if have and have["identity_hash"] != model_info["identity_hash"]:
        raise BankError(
            f"{path} was built with model {have['name']} (identity {have['identity_hash'][:12]}, "
            f"arch {have['arch']}) but you are using {model_info['name']} (identity "
            f"{model_info['identity_hash'][:12]}, arch {model_info['arch']}); embeddings from different models "
            f"are not comparable. Pass --weights {have.get('spec', have['name'])} or use another --bank"
        )


def _read_segments(path: Path, manifest: dict) -> pa.Table:
    schema = items_schema(int(manifest["embedding_dim"]))
    tables = [pq.read_table(path / s["file"], schema=schema) for s in manifest["segments"]]
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables).combine_chunks()


def _vectors(table: pa.Table, kind: str, dim: int) -> np.ndarray:
    col = table.column(kind).combine_chunks()
    if len(col) == 0:
        return np.zeros((0, dim), np.float32)
    return np.ascontiguousarray(col.flatten().to_numpy().reshape(-1, dim), dtype=np.float32)


def _pdq_codes(table: pa.Table) -> np.ndarray:
    values = table.column("pdq").to_pylist()
    if not values:
        return np.zeros((0, PDQ_BYTES), np.uint8)
    return np.frombuffer(b"".join(values), dtype=np.uint8).reshape(-1, PDQ_BYTES).copy()


class BankWriter:
    """The one writer of a bank: holds the lock, commits atomically, writes indexes on close."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        model_info: dict | None = None,
        embedding_dim: int | None = None,
        create: bool = True,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
        snapshot: Bank | None = None,
        persist_indexes: bool = True,
    ) -> None:
        """`snapshot`: a Bank the caller already holds (and may keep searching from other threads); it is
        reused when it is still the latest commit. `persist_indexes=False` leaves index files stale (they
        are caught up on open): for many small commits, as an HTTP service makes."""
        self.path = Path(path)
        self._snapshot = snapshot
        self.persist_indexes = persist_indexes
        self.model_info = model_info
        self.embedding_dim = embedding_dim
        self.create = create
        self.lock_timeout = lock_timeout
        self._lock_fd: int | None = None
        self.bank: Bank | None = None
        self._dirty = False

    def __enter__(self) -> "BankWriter":
        if not (self.path / MANIFEST).is_file():
            if not self.create:
                read_manifest(self.path)  # raises the right message
            if self.model_info is None or self.embedding_dim is None:
                raise BankError(f"no bank at {self.path}; add images to create one")
            self.path.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            if not (self.path / MANIFEST).is_file():
                self._write_manifest(self._new_manifest())
            snap = self._snapshot
            if snap is not None and snap.manifest["generation"] == read_manifest(self.path)["generation"]:
                self.bank = snap
            else:
                self.bank, self._snapshot = Bank.open(self.path), None
            if self.model_info is not None:
                check_model(self.bank.manifest, self.model_info, self.path)
            self._sweep()
        except BaseException:
            self._release_lock()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._dirty and self.bank is not None and self.persist_indexes:
                self._write_indexes()
        finally:
            self._release_lock()

    # -- operations (each one commit) ------------------------------------------------------------

    def add(self, items: Sequence[NewItem]) -> list[int]:
        """Append items (callers skip known sha256s) in one commit; returns their new ids."""
        assert self.bank is not None
        if not items:
            return []
        manifest = dict(self.bank.manifest)
        first = int(manifest["next_id"])
        ids = list(range(first, first + len(items)))
        now = datetime.now(timezone.utc)
        dim = self.bank.dim
        for it in items:
            check_label(it.label)
            if it.cls.shape != (dim,) or it.patch.shape != (dim,):
                raise BankError(f"{self.path}: embeddings of width {it.cls.shape} do not fit this bank's {dim}")
        table = pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "sha256": [it.sha256 for it in items],
                "path": [it.path for it in items],
                "label": [it.label for it in items],
                "source": [it.source for it in items],
                "campaign": [it.campaign for it in items],
                "note": [it.note for it in items],
                "added_at": pa.array([now] * len(items), pa.timestamp("us", tz="UTC")),
                "p_fake": pa.array([it.p_fake for it in items], pa.float32()),
                "logit": pa.array([it.logit for it in items], pa.float32()),
                "pdq": pa.array([it.pdq for it in items], pa.binary(PDQ_BYTES)),
                "pdq_quality": pa.array([it.pdq_quality for it in items], pa.int16()),
                "cls": _vector_array([it.cls for it in items], dim),
                "patch": _vector_array([it.patch for it in items], dim),
                "width": pa.array([it.width for it in items], pa.int32()),
                "height": pa.array([it.height for it in items], pa.int32()),
                "pdq_dihedral": pa.array([it.pdq_dihedral for it in items], pa.binary(PDQ_DIHEDRAL_BYTES)),
                "pdq_trim": pa.array([it.pdq_trim for it in items], pa.binary(PDQ_BYTES)),
                "pdq_trim_quality": pa.array([it.pdq_trim_quality for it in items], pa.int16()),
                "local": pa.array([it.local for it in items], pa.binary()),
            },
            schema=items_schema(dim),
        )
        gen = manifest["generation"] + 1
        seg = self._write_segment(table, gen)
        manifest["segments"] = manifest["segments"] + [seg]
        manifest["next_id"] = first + len(items)
        self._commit(manifest, gen, appended=table)
        if len(self.bank.manifest["segments"]) > MAX_SEGMENTS:
            self.compact()
        return ids

    def compact(self) -> None:
        """Merge every segment into one (many small commits, as the HTTP service makes, add up)."""
        self._rewrite([], lambda t, mask: t)

    def write_indexes(self) -> None:
        """Persist the derived indexes now (otherwise done on close unless persist_indexes=False)."""
        self._write_indexes()

    def set_label(self, ids: Iterable[int], label: str) -> None:
        check_label(label)
        self._rewrite(ids, lambda t, mask: t.set_column(
            t.schema.get_field_index("label"), "label",
            pa.array(np.where(mask, label, np.asarray(t.column("label").to_pylist(), dtype=object)).tolist(),
                     pa.string())))

    def set_campaigns(self, assignments: dict[int, str | None]) -> None:
        """Set (None: clear) the computed campaign of the given items in the stored assignments.

        Never touches the analyst's `campaign` column: those values are ground truth given at `add` time.
        """
        assert self.bank is not None
        for i in assignments:
            self.bank.row(i)  # raises UsageError naming an unknown id
        current = self.bank.campaign_assignments()
        rows = {} if current is None else {
            i: (c, o) for i, c, o in zip(current.column("id").to_pylist(), current.column("campaign").to_pylist(),
                                         current.column("origin").to_pylist())}
        for i, name in assignments.items():
            if name is None:
                rows.pop(int(i), None)
            else:
                rows[int(i)] = (name, "computed")
        table = pa.table({"id": pa.array(list(rows), pa.int64()),
                          "campaign": pa.array([c for c, _ in rows.values()], pa.string()),
                          "origin": pa.array([o for _, o in rows.values()], pa.string())}, schema=CAMPAIGNS_SCHEMA)
        self.commit_campaigns(table, {k: v for k, v in (self.bank.manifest.get("campaigns") or {}).items()
                                      if k != "file"})

    def commit_campaigns(self, assignments: pa.Table, info: dict) -> None:
        """Store a campaign run's assignments (CAMPAIGNS_SCHEMA) and its `info` in one atomic commit.

        Items, labels and derived indexes are unchanged, so the index files stay valid.
        """
        assert self.bank is not None
        manifest = dict(self.bank.manifest)
        gen = manifest["generation"] + 1
        name = f"campaigns-{gen:06d}.parquet"
        tmp = self.path / (name + ".tmp")
        pq.write_table(assignments.cast(CAMPAIGNS_SCHEMA), tmp, compression="zstd")
        _fsync(tmp)
        os.replace(tmp, self.path / name)
        manifest["campaigns"] = {**info, "file": name, "assigned": len(assignments)}
        dirty = self._dirty
        self._commit(manifest, gen, table=self.bank.table)
        self._dirty = dirty  # no index changed: keep the index files the manifest already names

    def remove(self, ids: Iterable[int]) -> None:
        self._rewrite(ids, lambda t, mask: t.filter(pa.array(~mask)))

    def set_manifest_entry(self, key: str, value: dict) -> None:
        """Store a settings record (e.g. the near-duplicate thresholds, "dedup") in the manifest, one commit."""
        assert self.bank is not None
        if key in ("format_version", "segments", "indexes", "counts", "generation", "next_id", "model"):
            raise BankError(f"{key!r} is bank bookkeeping, not a setting")
        manifest = dict(self.bank.manifest)
        manifest[key] = value
        gen = manifest["generation"] + 1
        dirty = self._dirty
        self._commit(manifest, gen, table=self.bank.table)
        self._dirty = dirty  # no item changed: the index files the manifest names stay valid

    def set_fusion(self, fusion: dict) -> None:
        assert self.bank is not None
        manifest = dict(self.bank.manifest)
        manifest["fusion"] = fusion
        gen = manifest["generation"] + 1
        self._commit(manifest, gen, table=self.bank.table)

    def _rewrite(self, ids: Iterable[int], change) -> None:
        """Compact every segment into one with `change(table, mask_of_ids)` applied."""
        assert self.bank is not None
        ids = [int(i) for i in ids]
        for i in ids:
            self.bank.row(i)  # raises UsageError naming an unknown id
        mask = np.isin(self.bank.ids, np.asarray(ids, np.int64))
        table = change(self.bank.table, mask)
        manifest = dict(self.bank.manifest)
        gen = manifest["generation"] + 1
        manifest["segments"] = [self._write_segment(table, gen)] if len(table) else []
        self._commit(manifest, gen, table=table.combine_chunks())

    # -- commit machinery ------------------------------------------------------------------------

    def _new_manifest(self) -> dict:
        now = datetime.now(timezone.utc).isoformat()
        return {
            "format_version": FORMAT_VERSION,
            "created_at": now,
            "updated_at": now,
            "model": self.model_info,
            "embedding_dim": self.embedding_dim,
            "embedding_kinds": list(VECTOR_KINDS),
            "generation": 0,
            "next_id": 1,
            "segments": [],
            "indexes": {},
            "fusion": None,
            "counts": {"items": 0, **{label: 0 for label in LABELS}},
        }

    def _write_segment(self, table: pa.Table, gen: int) -> dict:
        name = f"seg-{gen:06d}.parquet"
        tmp = self.path / (name + ".tmp")
        pq.write_table(table, tmp, compression="zstd")
        _fsync(tmp)
        os.replace(tmp, self.path / name)
        return {"file": name, "rows": len(table)}

    def _commit(self, manifest: dict, gen: int, *, table: pa.Table | None = None,
                appended: pa.Table | None = None) -> None:
        """Write the manifest (the commit point), then move the in-memory snapshot to the new state."""
        assert self.bank is not None
        manifest["generation"] = gen
        manifest["updated_at"] = datetime.now(timezone.utc).isoformat()
        if appended is not None:
            counts = dict(manifest["counts"])
            counts["items"] += len(appended)
            for label in appended.column("label").to_pylist():
                counts[label] += 1
        else:
            labels = table.column("label").to_pylist()
            counts = {"items": len(table), **{label: labels.count(label) for label in LABELS}}
        manifest["counts"] = counts
        if self.model_info is not None and manifest.get("model") is None:
            manifest["model"] = self.model_info
        self._write_manifest(manifest)
        if appended is not None:
            # The caller's snapshot may be searched by other threads: copy its indexes, don't move them.
            shared = self._snapshot is not None and self.bank is self._snapshot
            self.bank = self.bank.with_appended(manifest, appended, copy_indexes=shared)
        else:
            self.bank = Bank(self.path, manifest, table)
        self._dirty = True
        self._sweep()

    def _write_manifest(self, manifest: dict) -> None:
        tmp = self.path / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        _fsync(tmp)
        os.replace(tmp, self.path / MANIFEST)
        _fsync(self.path)

    def _write_indexes(self) -> None:
        """Persist derived indexes for the current state (a crash here only costs a rebuild later)."""
        assert self.bank is not None
        manifest = dict(self.bank.manifest)
        gen = manifest["generation"]
        entries = {}
        for kind in (*VECTOR_KINDS, *BINARY_KINDS):
            idx = self.bank.index(kind)
            if kind in DEDUP_INDEX_KINDS and idx.ntotal == 0:
                continue  # nothing to persist: rebuilt (empty) on open at no cost
            name = f"{kind}-{gen:06d}.faiss"
            tmp = self.path / (name + ".tmp")
            faiss_index.save(idx, tmp)
            _fsync(tmp)
            os.replace(tmp, self.path / name)
            entries[kind] = {
                "file": name,
                "factory": "IDMap2,BinaryFlat" if kind == "pdq" else faiss_index.choose_factory(len(self.bank), self.bank.dim),
                "segments": manifest["segments"],
            }
            if kind in DEDUP_INDEX_KINDS:  # not one vector per row: record how many it holds
                entries[kind]["factory"] = "IDMap2,BinaryFlat" if kind == "pdq_trim" else faiss_index.local_factory(idx.ntotal)
                entries[kind]["ntotal"] = int(idx.ntotal)
        manifest["indexes"] = entries
        self._write_manifest(manifest)
        self.bank.manifest = manifest
        self._sweep()

    def _sweep(self) -> None:
        """Delete files that no manifest names (left by a crashed or superseded commit)."""
        assert self.bank is not None
        live = {s["file"] for s in self.bank.manifest["segments"]}
        live |= {e["file"] for e in self.bank.manifest.get("indexes", {}).values()}
        live |= {(self.bank.manifest.get("campaigns") or {}).get("file")}
        for p in self.path.iterdir():
            if _OWNED_FILE.match(p.name) and p.name not in live and p.name != MANIFEST + ".tmp":
                p.unlink(missing_ok=True)

    # -- lock ---------------------------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                    os.close(fd)
                    raise BankError(
                        f"{self.path} is being written by another fakebank process (pid {holder}); "
                        f"waited {self.lock_timeout:.0f} s. Wait for it to finish, then retry"
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None


def _vector_array(vectors: list[np.ndarray], dim: int) -> pa.FixedSizeListArray:
    flat = pa.array(np.stack(vectors).astype(np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, dim)


def _fsync(path: Path) -> None:
    """fsync a file's data, or a folder's entries (so that a rename inside it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
