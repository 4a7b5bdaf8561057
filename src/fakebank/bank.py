"""The bank folder: immutable item segments with their own index shards, small delta files, a manifest.

Sits after embed and before decide/dedup/campaigns; it never imports torch or the model.

On disk (DESIGN §1.4), format 2::

    manifest.json            the commit point: names every live file, the model identity, counts
    seg-000007.arrow         one segment of items: an Arrow IPC file (all columns, id-sorted), memory-mapped
    seg-000007.sha.npy       (64-bit hash of the sha256, row) sorted: the duplicate check without a table scan
    seg-000007.cls.faiss …   the segment's index shards (cls, pdq, pdq_trim, local .faiss; pdq_mih,
                             pdq_trim_mih .npy), written once with it
    localq-000005.npy        the local descriptors' coarse cells, trained once when the bank first needs them
    delta-000012.parquet     small changes merged at read: relabels, removals, campaign edits
    campaigns-000009.parquet computed campaign assignments (a whole run: `fakebank campaigns`)
    bank.lock                one writer at a time (flock; released by the kernel if the writer dies)

Cost follows the change, not the bank (LSM-style): opening reads the manifest and the delta files, maps
the segments' footers and holds their shard files open; shards are memory-mapped when a search first
touches them; per-item metadata is read by id (binary search in the segment's id column, then one row).
`add` writes one new segment; `label`/`remove` write one delta file. Segments are merged by size tier as
commits go (never more than AUTO_MERGE_MAX_ROWS rows in one merge, so a commit's cost is bounded whatever
the bank's size); `compact` merges everything and folds the deltas in. It is never needed for correctness.

Per-item bytes (what a query process keeps resident at scale, measured at 1M by scripts/bench_scale.py;
the rest stays on disk, read by id):

    cls       656 B: HNSW32 over SQ8 codes in segments ≥ ANN_MIN_ROWS (smaller ones are searched exactly),
              re-ranked exactly on the float32 vectors (1.5 KB, on disk)
    pdq       32 B of hashes + 106 B of multi-index buckets (segments ≥ MIH_MIN_ROWS: exact to 31 bits)
    pdq_trim  6 B + 55 B, the same for the ≈ 1 in 5 items whose de-bordered hash differs
    local     1.28 KB: 40 B per indexed ORB descriptor, all 128 an item in small segments,
              LOCAL_INDEX_FEATURES_LARGE (32) in segments ≥ LOCAL_REDUCE_ROWS (verified on all 128 stored)
    patch     0: on disk only (campaigns read it); metadata and the sha256 table: on disk, read by id
    total     ≈ 2.1 KB an item: ≈ 21 GB at 10M items

A commit writes new files beside the old ones (tmp, fsync, rename), then the manifest the same way.
A crash at any instant leaves the previous manifest in place, which names only complete files; files no
manifest names are swept by the next writer. Readers take no lock.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fakebank import index as faiss_index
from fakebank.errors import BankError, NotFoundError, ReadOnlyError, UsageError
from fakebank.pdq import PDQ_MIN_QUALITY

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
LOCK_FILE = "bank.lock"
LABELS = ("fake", "real", "unknown")
DEFAULT_BANK = "indexes/default"
BANK_ENV = "FAKEBANK_BANK"
DEFAULT_LOCK_TIMEOUT_S = 30.0
LOCK_QUIET_S = 2.0  # a wait for another writer longer than this is said (once), not silent
VECTOR_KINDS = ("cls", "patch")
PDQ_BYTES = 32
# Size-tiered merging: MERGE_FANOUT consecutive segments of one tier (rows < MERGE_FANOUT ** tier) are
# merged into one, as long as the result stays ≤ AUTO_MERGE_MAX_ROWS (bounds any one commit's cost).
MERGE_FANOUT = 8
AUTO_MERGE_MAX_ROWS = 1 << 18
MAX_SEGMENT_ROWS = 1 << 18  # `compact` writes segments of at most this many rows
MAX_DELTA_FILES = 16  # more delta files than this are folded into one (cost: the deltas, not the bank)
# Local descriptors: all of an item's indexed below LOCAL_REDUCE_ROWS rows a segment; above, the strongest
# LOCAL_INDEX_FEATURES_LARGE, so that 10M items fit memory (candidates are verified on all stored ones).
LOCAL_REDUCE_ROWS = 1 << 15
LOCAL_INDEX_FEATURES_LARGE = 32
SHARD_KINDS = ("cls", "pdq", "pdq_trim", "local", "pdq_mih", "pdq_trim_mih", "frame_pdq", "frame_pdq_mih")
MIH_KINDS = ("pdq_mih", "pdq_trim_mih", "frame_pdq_mih")
_OWNED_FILE = re.compile(
    r"^(seg-\d+(-\d+)?\.(parquet|arrow|sha\.npy|(pdq|pdq_trim|frame_pdq)_mih\.npy|(cls|pdq|pdq_trim|local|frame_pdq)\.faiss)|delta-\d+\.parquet|campaigns-\d+\.parquet|thumbs-\d+\.arrow"
    r"|localq-\d+\.npy|(cls|patch|pdq|pdq_trim|local)-\d+\.faiss|.*\.tmp)$")
# Near-duplicate signals (dedup.py) beyond `pdq`: the PDQ hashes of de-bordered images and the ORB
# descriptors of every item. A local descriptor's id is item_id << LOCAL_ID_BITS | its rank within the item.
DEDUP_INDEX_KINDS = ("pdq_trim", "local")
BINARY_KINDS = ("pdq", *DEDUP_INDEX_KINDS, "frame_pdq")
LOCAL_ID_BITS = 10
PDQ_DIHEDRAL_BYTES = 7 * PDQ_BYTES  # the 7 rotated/mirrored hashes after the stored one
# Computed campaign assignments (`fakebank campaigns`), a sidecar the manifest names under "campaigns";
# the analyst's `campaign` column of the items table is never written by clustering.
CAMPAIGNS_SCHEMA = pa.schema([("id", pa.int64()), ("campaign", pa.string()), ("origin", pa.string())])
# One change per row: op "label" (value: the label), "remove", "campaign" (value: computed campaign, null
# clears it). Later rows win.
DELTA_SCHEMA = pa.schema([("id", pa.int64()), ("op", pa.string()), ("value", pa.string())])
# delta ops that overwrite a metadata column, and that column (label, remove, campaign: their own ops);
# "analyst_campaign" sets the analyst's `campaign` column of an item already in the bank (`label --campaign`)
EDIT_COLUMN = {"note": "note", "tags": "tags", "analyst_campaign": "campaign"}
EDIT_OPS = tuple(EDIT_COLUMN)
EDITED_COLUMNS = tuple(EDIT_COLUMN.values())
_EDIT_OP_OF = {c: op for op, c in EDIT_COLUMN.items()}
# Thumbnails made after their items were added (`fakebank thumbnails`): segments are immutable, so they
# live in id-sorted side files (Arrow IPC, memory-mapped like segments) that the manifest lists under
# "thumbnails", newest last; a merge folds them into the merged segment's column, `compact` drops them.
THUMBS_SCHEMA = pa.schema([("id", pa.int64()), ("thumbnail", pa.binary())])


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
            # hash-sharing (hashlists.py): "hash" for an item known only by its PDQ hash (null: an image)
            ("media", pa.string()),
            ("tags", pa.string()),  # space-separated, as the exchanges' CSV writes them
            ("external_id", pa.string()),  # the exchange's own id of the signal
            # JPEG (WebP before 2026-12-02), longest side 256 (thumbnails.py); null for rows added before
            # thumbnails existed: those get theirs from `fakebank thumbnails`, in side files (THUMBS_SCHEMA)
            ("thumbnail", pa.binary()),
            # videos (video.py): one row per video (media "video"), its other columns those of the frame
            # that drove its verdict; null for images and hashes
            ("duration_s", pa.float32()),
            ("fps", pa.float32()),
            ("frames", pa.binary()),  # video.pack_frames: every sampled frame's number, time, PDQ, logit, cls
            ("frame_pdq", pa.binary()),  # the usable frame hashes the frame_pdq shard indexes, 32 bytes each
            # grid.PatchGrid.to_bytes(): where the image's structure sits, to verify embedding-only copies;
            # null for rows added before it existed (dedup then drops the embedding signal for them)
            ("patch_grid", pa.binary()),
        ]
    )


HASH_ONLY = "hash"
VIDEO = "video"  # media of a video item: one row, many frames (video.py)
BOOKKEEPING = ("format_version", "segments", "deltas", "counts", "generation", "next_id", "model")
HASH_ONLY_COUNT = "hash_only"  # manifest["counts"] key: hash-only items among `items`
SHARED_HASH_QUALITY = PDQ_MIN_QUALITY  # the quality a shared hash of unknown quality is read as: usable
# A segment of hash-only items stores none of the columns that come from pixels (nulls of a fixed-width
# column still take their width: the embeddings alone would cost 3 KB an item); it has no `cls` shard,
# reads its vectors as zeros and those columns as nulls.
_PIXEL_COLUMNS = ("cls", "patch", "pdq_dihedral", "pdq_trim", "pdq_trim_quality", "local", "thumbnail", "patch_grid",
                  "duration_s", "fps", "frames", "frame_pdq")


def hash_only_schema(dim: int) -> pa.Schema:
    schema = items_schema(dim)
    return pa.schema([f for f in schema if f.name not in _PIXEL_COLUMNS])


def conform(table: pa.Table, dim: int, hash_only: bool = False) -> pa.Table:
    """`table` with every column of today's items schema, in its order: a segment written before a column
    existed reads it as nulls (columns are only ever added, never changed), so no migration is needed."""
    schema = hash_only_schema(dim) if hash_only else items_schema(dim)
    if table.schema.names == schema.names:
        return table
    columns = [table.column(f.name) if f.name in table.schema.names else pa.nulls(len(table), f.type)
               for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


@dataclass(frozen=True)
class NewItem:
    """One row to add. A hash-only item (`media="hash"`) has a PDQ hash and metadata but no pixels: its
    `cls`/`patch` are None, and `sha256` is `signal_key`'s digest of the signal, not of a file."""

    sha256: str
    path: str | None
    label: str
    p_fake: float | None
    logit: float | None
    pdq: bytes
    pdq_quality: int
    cls: np.ndarray | None
    patch: np.ndarray | None
    width: int | None
    height: int | None
    source: str | None = None
    campaign: str | None = None
    note: str | None = None
    pdq_dihedral: bytes | None = None  # PdqHash.dihedral[1:], concatenated
    pdq_trim: bytes | None = None  # PDQ of the de-bordered image, when it differs from the whole
    pdq_trim_quality: int | None = None
    local: bytes | None = None  # LocalFeatures.to_bytes()
    thumbnail: bytes | None = None  # thumbnails.make_thumbnail() of the decoded image
    media: str | None = None  # None: an image; HASH_ONLY: a hash without pixels; VIDEO: a video
    tags: str | None = None
    external_id: str | None = None
    duration_s: float | None = None  # videos (video.py)
    fps: float | None = None
    frames: bytes | None = None  # video.pack_frames(...)
    frame_pdq: bytes | None = None  # concatenated 32-byte frame hashes to index (video.index_codes)
    patch_grid: bytes | None = None  # grid.PatchGrid.to_bytes()

    @property
    def hash_only(self) -> bool:
        return self.media == HASH_ONLY


def signal_key(signal_type: str, signal: str, source: str | None) -> str:
    """The identity of a shared signal in a bank (the `sha256` of its hash-only item): the same hash from
    the same source is one item, so importing a list twice updates instead of duplicating."""
    return hashlib.sha256(f"fakebank-signal\0{signal_type}\0{source or ''}\0{signal.lower()}".encode()).hexdigest()


def check_label(label: str) -> str:
    if label not in LABELS:
        shown = repr(label) if len(str(label)) <= 40 else f"{str(label)[:40]!r}… ({len(str(label)):,} characters)"
        raise UsageError(f"label must be one of {', '.join(LABELS)}, not {shown}")
    return label


CAMPAIGN_ID_PREFIX = "C"  # computed campaigns are C0001, C0002, … (campaigns.name_clusters)
_COMPUTED_ID = re.compile(rf"{CAMPAIGN_ID_PREFIX}\d{{4,}}")


def check_campaign_name(name: str | None) -> str | None:
    """An analyst campaign name, stripped (None: none). A name of the computed ids' form is refused: the
    next `fakebank campaigns` run would treat it as the analyst's and move that computed campaign to a new id."""
    name = (name or "").strip() or None
    if name is not None and _COMPUTED_ID.fullmatch(name):
        raise UsageError(f"campaign {name!r} has the form of a computed campaign id; give the analyst campaign a "
                         f"name of its own (e.g. 'Op Rain'), the same for every item that belongs to it")
    return name


def check_new_item(it: NewItem, dim: int, where) -> None:
    """A row fit for a bank of embedding width `dim` (either store): a label, and a hash or embeddings."""
    check_label(it.label)
    if it.hash_only:
        if it.pdq is None or len(it.pdq) != PDQ_BYTES:
            raise BankError("a hash-only item needs a 256-bit PDQ hash")
    elif it.cls is None or it.cls.shape != (dim,) or it.patch.shape != (dim,):
        raise BankError(f"{where}: embeddings of width {None if it.cls is None else it.cls.shape} "
                        f"do not fit this bank's {dim}")
    if it.frame_pdq and len(it.frame_pdq) % PDQ_BYTES:
        raise BankError(f"{it.path}: frame_pdq of {len(it.frame_pdq)} bytes is not whole "
                        f"{PDQ_BYTES}-byte hashes (video.index_codes makes it)")


# -- segments ----------------------------------------------------------------------------------------------

class Segment:
    """One immutable run of items (id-sorted) and its index shards, memory-mapped on first use.

    Shards index rows (positions in the segment); the segment's id column maps them back to item ids.
    """

    def __init__(self, folder: Path, entry: dict, dim: int, table: pa.Table | None = None) -> None:
        self.folder, self.entry, self.dim = folder, entry, dim
        self.rows = int(entry["rows"])
        self.min_id, self.max_id = int(entry["min_id"]), int(entry["max_id"])
        self.hash_only = bool(entry.get("hash_only", False))
        if table is not None:  # in memory: a bank of format 1 read as is
            self.__dict__["table"] = table.combine_chunks()
        self._shards: dict[str, object] = {}
        self._fds: dict[str, int] = {}

    @cached_property
    def table(self) -> pa.Table:
        path = self.folder / self.entry["file"]
        try:
            reader = pa.ipc.open_file(pa.memory_map(str(path)))
            table = reader.read_all()
        except FileNotFoundError:
            raise BankError(f"{self.folder}: segment {self.entry['file']} named by the manifest is missing; "
                            "the bank is damaged. Restore the folder from a backup") from None
        except (pa.ArrowInvalid, OSError) as e:
            raise BankError(f"{self.folder}: segment {self.entry['file']} is unreadable ({e}); the bank is "
                            "damaged. Restore the folder from a backup") from None
        if len(table) != self.rows:
            raise BankError(f"{path}: holds {len(table)} rows, the manifest says {self.rows}; restore the bank")
        return conform(table, self.dim, self.hash_only)

    def map_files(self) -> None:
        """Hold the segment's files now (its table mapped: a footer read; its shards by an open descriptor,
        read only when searched), so that a writer sweeping them after a merge cannot pull them from under
        this snapshot: an unlinked file stays readable while open."""
        self.table
        self._sha_keys
        for kind, name in self.entry.get("shards", {}).items():
            if kind not in self._fds:
                try:
                    self._fds[kind] = os.open(self.folder / name, os.O_RDONLY)
                except FileNotFoundError:
                    raise BankError(f"{self.folder}: index shard {name} named by the manifest is missing; "
                                    "the bank is damaged. Restore the folder from a backup") from None

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)

    def column(self, name: str) -> pa.Array:
        if self.hash_only and name in _PIXEL_COLUMNS:
            return pa.nulls(self.rows, items_schema(self.dim).field(name).type)
        col = self.table.column(name)
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()

    @cached_property
    def ids(self) -> np.ndarray:
        return self.column("id").to_numpy(zero_copy_only=False)

    def vectors(self, kind: str) -> np.ndarray:
        """[rows, dim] float32, a view of the mapped file (no copy); zeros for hash-only items."""
        if self.hash_only:
            return np.zeros((self.rows, self.dim), np.float32)
        col = self.column(kind)
        if self.rows == 0:
            return np.zeros((0, self.dim), np.float32)
        return col.values.to_numpy(zero_copy_only=False)[col.offset * self.dim:(col.offset + self.rows) * self.dim] \
            .reshape(self.rows, self.dim)

    def fixed_bytes(self, name: str, width: int) -> np.ndarray:
        """A fixed-width binary column as [rows, width] uint8 (nulls read as zeros)."""
        col = self.column(name)
        buf = col.buffers()[1]
        if buf is None or self.rows == 0:
            return np.zeros((self.rows, width), np.uint8)
        return np.frombuffer(buf, np.uint8)[col.offset * width:(col.offset + self.rows) * width].reshape(self.rows, width)

    @cached_property
    def pdq_codes(self) -> np.ndarray:
        return self.fixed_bytes("pdq", PDQ_BYTES)

    @cached_property
    def pdq_quality(self) -> np.ndarray:
        # A hash shared without its quality (most lists carry none) is taken as usable: exchanges share
        # hashes that passed their sender's quality gate, and pytx/HMA match them all.
        return self.column("pdq_quality").fill_null(SHARED_HASH_QUALITY).to_numpy(zero_copy_only=False)

    def row_of(self, item_id: int) -> int:
        """The row of an id in this segment, or -1."""
        if not self.min_id <= item_id <= self.max_id:
            return -1
        r = int(np.searchsorted(self.ids, item_id))
        return r if r < self.rows and self.ids[r] == item_id else -1

    def value(self, row: int, name: str):
        if self.hash_only and name in _PIXEL_COLUMNS:
            return None
        return self.table.column(name)[row].as_py()

    @cached_property
    def _sha_keys(self) -> np.ndarray:
        name = self.entry.get("sha")
        if name:
            try:
                return np.load(self.folder / name, mmap_mode="r")
            except (OSError, ValueError) as e:  # missing, truncated or not a .npy file
                raise BankError(f"{self.folder}: {name} named by the manifest is missing or unreadable ({e}); the "
                                "bank is damaged. Restore the folder from a backup") from None
        return sha_keys(self.column("sha256").to_pylist())

    def row_of_sha256(self, sha256: str) -> int:
        keys = self._sha_keys
        key = _sha_key(sha256)
        lo = int(np.searchsorted(keys[:, 0], key))
        while lo < len(keys) and keys[lo, 0] == key:
            r = int(keys[lo, 1])
            if self.value(r, "sha256") == sha256:
                return r
            lo += 1
        return -1

    # -- shards --------------------------------------------------------------------------------------

    def shard(self, kind: str):
        """The segment's index for `kind`: mapped from its file, or built in memory for a small segment.
        `cls` is None when the segment is searched exactly."""
        if kind not in self._shards:
            name = self.entry.get("shards", {}).get(kind)
            if name:
                self.map_files()
                path = Path(f"/proc/self/fd/{self._fds[kind]}")  # the file this snapshot holds, swept or not
                if kind in MIH_KINDS:
                    self._shards[kind] = np.load(path, mmap_mode="r")
                else:
                    self._shards[kind] = faiss_index.load_mapped(path, binary=kind in BINARY_KINDS)
            else:
                self._shards[kind] = build_shard(self, kind)
        return self._shards[kind]

    @cached_property
    def trim_rows(self) -> np.ndarray:
        """Rows that have a de-bordered hash (the positions of the pdq_trim shard)."""
        if self.hash_only:
            return np.zeros(0, np.int64)
        valid = self.column("pdq_trim").is_valid().to_numpy(zero_copy_only=False)
        return np.flatnonzero(valid).astype(np.int64)

    @cached_property
    def frame_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """(codes [n, 32] uint8, row of each): every video's indexed frame hashes, concatenated in row order
        (a view of the mapped column), and the segment row each belongs to (from the column's offsets)."""
        col = self.column("frame_pdq")
        if self.rows == 0 or col.null_count == len(col):
            return np.zeros((0, PDQ_BYTES), np.uint8), np.zeros(0, np.int64)
        _, offsets_buf, data_buf = col.buffers()
        offsets = np.frombuffer(offsets_buf, np.int32)[col.offset:col.offset + self.rows + 1]
        counts = np.diff(offsets) // PDQ_BYTES  # a null row has no bytes
        data = np.frombuffer(data_buf, np.uint8)[offsets[0]:offsets[-1]]
        return data.reshape(-1, PDQ_BYTES), np.repeat(np.arange(self.rows, dtype=np.int64), counts)

    @property
    def local_reduced(self) -> bool:
        return self.rows >= LOCAL_REDUCE_ROWS


def build_shard(seg: Segment, kind: str, centroids: np.ndarray | None = None):
    if kind == "cls":
        if seg.hash_only:
            return None
        return faiss_index.build_ann(seg.vectors("cls")) if seg.rows >= faiss_index.ANN_MIN_ROWS else None
    if kind == "pdq":
        return faiss_index.build_binary_flat(seg.pdq_codes)
    if kind == "pdq_trim":
        return faiss_index.build_binary_flat(seg.fixed_bytes("pdq_trim", PDQ_BYTES)[seg.trim_rows])
    if kind in ("frame_pdq", "frame_pdq_mih"):
        codes, _ = seg.frame_codes
        if not len(codes):
            return None
        if kind == "frame_pdq":
            return faiss_index.build_binary_flat(codes)
        # positions in the segment's frame codes, which the search maps to rows (Segment.frame_codes)
        return faiss_index.build_mih(codes, np.arange(len(codes))) if len(codes) >= faiss_index.MIH_MIN_ROWS else None
    if kind in MIH_KINDS:
        if seg.rows < faiss_index.MIH_MIN_ROWS:
            return None
        if kind == "pdq_mih":
            return faiss_index.build_mih(seg.pdq_codes, np.arange(seg.rows))
        if not len(seg.trim_rows):
            return None  # the flat pdq_trim shard (empty) answers
        return faiss_index.build_mih(seg.fixed_bytes("pdq_trim", PDQ_BYTES)[seg.trim_rows], seg.trim_rows)
    if kind == "local":
        codes, ids = local_rows(seg.column("local"), LOCAL_INDEX_FEATURES_LARGE if seg.local_reduced else None)
        if centroids is not None:
            return faiss_index.build_local_ivf(centroids, codes, ids)
        return faiss_index.build_local(codes, ids)  # exact below LOCAL_EXACT_LIMIT (a bank before its cells)
    raise ValueError(kind)


def local_rows(blobs: pa.Array, per_item: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(descriptors [n, 32], ids row << LOCAL_ID_BITS | rank) of every row's stored local features (the
    strongest `per_item` of each when given), read straight from the packed column."""
    from fakebank.signals import LOCAL_DESC_BYTES, LOCAL_FEATURE_BYTES

    _, offset_buf, data = blobs.buffers()[:3]
    offsets = np.frombuffer(offset_buf, np.int32)[blobs.offset:blobs.offset + len(blobs) + 1].astype(np.int64)
    raw = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    counts = (offsets[1:] - offsets[:-1]) // LOCAL_FEATURE_BYTES
    counts = np.minimum(counts, 1 << LOCAL_ID_BITS)
    if per_item is not None:
        counts = np.minimum(counts, per_item)
    total = int(counts.sum())
    if total == 0:
        return np.zeros((0, PDQ_BYTES), np.uint8), np.zeros(0, np.int64)
    rows = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    rank = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    # descriptors come first in each packed blob
    codes = np.concatenate([raw[o:o + c * LOCAL_DESC_BYTES] for o, c in zip(offsets[:-1].tolist(), counts.tolist())
                            if c]).reshape(-1, LOCAL_DESC_BYTES)
    return np.ascontiguousarray(codes), (rows << LOCAL_ID_BITS) | rank


def sha_keys(shas: Sequence[str]) -> np.ndarray:
    """[(key, row)] sorted by key: the segment's sha256 look-up table."""
    keys = np.array([_sha_key(s) for s in shas], np.int64) if len(shas) else np.zeros(0, np.int64)
    order = np.argsort(keys, kind="stable")
    return np.stack([keys[order], order.astype(np.int64)], axis=1) if len(shas) else np.zeros((0, 2), np.int64)


def _sha_key(sha256: str) -> int:
    """A uniform 64-bit key of any identifying string (not its prefix: ids need not be random hex)."""
    return int.from_bytes(hashlib.blake2b(str(sha256).encode(), digest_size=8).digest(), "big", signed=True)


# -- deltas ------------------------------------------------------------------------------------------------

@dataclass
class Deltas:
    """Changes merged at read: the latest label per relabelled id, removed ids, edits of the computed
    campaign assignments (`campaigns`, op "campaign"), and edits of item columns by EDIT_OPS (`edits`:
    a hash list's `note` and `tags`, the analyst's `campaign`), kept by column name."""

    labels: dict[int, str]
    removed: set[int]
    campaigns: dict[int, str | None]
    edits: dict[int, dict[str, str | None]] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> Deltas:
        return cls({}, set(), {})

    def copy(self) -> Deltas:
        return Deltas(dict(self.labels), set(self.removed), dict(self.campaigns),
                      {i: dict(e) for i, e in self.edits.items()})

    @classmethod
    def read(cls, path: Path, files: Sequence[str]) -> Deltas:
        d = cls.empty()
        for name in files:
            try:
                t = pq.read_table(path / name, schema=DELTA_SCHEMA)
            except FileNotFoundError:
                raise BankError(f"{path}: delta file {name} named by the manifest is missing") from None
            d.apply(t.column("id").to_pylist(), t.column("op").to_pylist(), t.column("value").to_pylist())
        return d

    def apply(self, ids, ops, values) -> None:
        for i, op, v in zip(ids, ops, values):
            if op == "label":
                self.labels[i] = v
            elif op == "remove":
                self.removed.add(i)
                self.labels.pop(i, None)
                self.campaigns.pop(i, None)
                self.edits.pop(i, None)
            elif op == "campaign":
                self.campaigns[i] = v
            elif op in EDIT_OPS:  # kept by column: readers overlay it on that column
                self.edits.setdefault(i, {})[EDIT_COLUMN[op]] = v

    def overrides(self, column: str) -> dict[int, str | None]:
        """What the deltas set in one column, by id: the labels for `label`, the edits for EDITED_COLUMNS."""
        if column == "label":
            return self.labels
        if column in EDITED_COLUMNS:
            return {i: e[column] for i, e in self.edits.items() if column in e}
        return {}

    def overlay(self, table: pa.Table, ids: np.ndarray) -> pa.Table:
        """`table`, whose rows are the items `ids`, with the labels and edited columns the deltas set."""
        for column in ("label", *EDITED_COLUMNS):
            over = self.overrides(column)
            if not over or column not in table.column_names:
                continue
            hit = np.isin(ids, np.fromiter(over, np.int64, len(over)))
            if not hit.any():
                continue
            k = table.schema.get_field_index(column)
            values = pc.replace_with_mask(table.column(column).combine_chunks(), pa.array(hit),
                                          pa.array([over[int(i)] for i in ids[hit]], pa.string()))
            table = table.set_column(k, table.schema.field(k), values)
        return table

    def changes(self) -> list[tuple[int, str, str | None]]:
        """The folded form: one (id, op, value) per id and op."""
        return ([(i, "label", v) for i, v in self.labels.items()] + [(i, "remove", None) for i in sorted(self.removed)]
                + [(i, "campaign", v) for i, v in self.campaigns.items()]
                + [(i, _EDIT_OP_OF[col], v) for i, e in self.edits.items() for col, v in e.items()])


def computed_campaign(bank, item_id: int) -> str | None:
    """The computed campaign of one item, from an id-sorted index of the bank's assignments built once
    per snapshot (a query asks this of each neighbour; the assignments file is read once, not per call)."""
    index = bank.__dict__.get("_campaign_index")
    if index is None:
        table = bank.campaign_assignments()
        if table is None or not len(table):
            index = (np.zeros(0, np.int64), np.zeros(0, object))
        else:
            ids = table.column("id").to_numpy()
            order = np.argsort(ids, kind="stable")
            index = (ids[order], np.asarray(table.column("campaign").to_pylist(), object)[order])
        bank.__dict__["_campaign_index"] = index
    ids, names = index
    pos = int(np.searchsorted(ids, item_id))
    return names[pos] if pos < len(ids) and ids[pos] == item_id else None


def delta_table(changes: Sequence[tuple[int, str, str | None]]) -> pa.Table:
    return pa.table({"id": pa.array([c[0] for c in changes], pa.int64()),
                     "op": pa.array([c[1] for c in changes], pa.string()),
                     "value": pa.array([c[2] for c in changes], pa.string())}, schema=DELTA_SCHEMA)


class ThumbFile:
    """One side file of thumbnails (THUMBS_SCHEMA, id-sorted), memory-mapped: a look-up reads one row."""

    def __init__(self, path: Path) -> None:
        try:
            table = pa.ipc.open_file(pa.memory_map(str(path))).read_all().combine_chunks()
        except FileNotFoundError:
            raise BankError(f"{path.parent}: thumbnail file {path.name} named by the manifest is missing; "
                            "retry (a writer may have just folded it), else run `fakebank thumbnails`") from None
        self.ids = table.column("id").to_numpy()
        self._thumbs = table.column("thumbnail")

    def get(self, item_id: int) -> bytes | None:
        r = int(np.searchsorted(self.ids, item_id))
        return self._thumbs[r].as_py() if r < len(self.ids) and self.ids[r] == item_id else None

    def items(self) -> dict[int, bytes]:
        return dict(zip(self.ids.tolist(), self._thumbs.to_pylist()))


def thumbs_table(thumbs: dict[int, bytes]) -> pa.Table:
    ids = sorted(thumbs)
    return pa.table({"id": pa.array(ids, pa.int64()), "thumbnail": pa.array([thumbs[i] for i in ids], pa.binary())},
                    schema=THUMBS_SCHEMA)


# -- the reader ----------------------------------------------------------------------------------------------

_BULK_COLUMNS = ("cls", "patch", "local", "pdq_dihedral", "thumbnail", "frames", "frame_pdq", "patch_grid")  # kept out of the whole-bank `table`
META_COLUMNS = ("id", "sha256", "path", "label", "source", "campaign", "note", "added_at", "p_fake",
                "logit", "pdq", "pdq_quality", "width", "height", "media", "tags", "external_id")  # `item`'s


def table_columns(dim: int) -> list[str]:
    """The columns of the whole-bank `table` (every store's): the item schema less the bulk columns."""
    return [f.name for f in items_schema(dim) if f.name not in _BULK_COLUMNS]


class Bank:
    """A consistent read-only snapshot of a bank folder.

    Per-id access (`has`, `item`, `value`, `vector` …) and searches cost what they touch. The whole-bank
    arrays (`ids`, `table`, `vectors`, `pdq_codes`, `pdq_quality`, `labels`, `row`) are built on first use,
    for whole-bank work (campaigns, duplicate groups); a query never builds them.
    """

    def __init__(self, path: Path, manifest: dict, segments: list[Segment], deltas: Deltas) -> None:
        self.path = path
        self.manifest = manifest
        self.dim = int(manifest["embedding_dim"])
        self.segments = segments
        self.deltas = deltas
        self._starts = [s.min_id for s in segments]
        self._quantizer = None

    @classmethod
    def open(cls, path: str | os.PathLike, *, retries: int = 5) -> Bank:
        path = Path(path)
        for attempt in range(retries):
            manifest = read_manifest(path)
            try:
                if manifest["format_version"] == 1:
                    return _open_format_1(path, manifest)
                dim = int(manifest["embedding_dim"])
                segments = [Segment(path, e, dim) for e in manifest["segments"]]
                for seg in segments:
                    seg.map_files()
                deltas = Deltas.read(path, manifest.get("deltas", []))
                bank = cls(path, manifest, segments, deltas)
                bank._check_counts()
                bank._thumb_files  # held now, like the segments, so that a writer's sweep cannot pull them
                return bank
            except (BankError, FileNotFoundError):
                # A writer compacted and swept files between our manifest read and now: reread.
                if attempt == retries - 1:
                    raise
                time.sleep(0.05)
        raise AssertionError("unreachable")

    def _check_counts(self) -> None:
        """The manifest's count against the segments' rows less the removals still in them (O(removals))."""
        held = sum(s.rows for s in self.segments)
        for i in self.deltas.removed:
            k = bisect.bisect_right(self._starts, i) - 1
            held -= k >= 0 and self.segments[k].row_of(i) >= 0
        expected = self.manifest["counts"]["items"]
        if held != expected:
            raise BankError(
                f"{self.path}: the manifest counts {expected} items but its segments hold {held}; "
                "the bank is damaged — restore it from a backup"
            )

    def with_segment(self, manifest: dict, segment: Segment) -> Bank:
        """This snapshot plus one appended segment (shards already mapped are shared: segments are immutable)."""
        bank = Bank(self.path, manifest, [*self.segments, segment], self.deltas)
        if "_thumb_files" in self.__dict__ and manifest.get("thumbnails") == self.manifest.get("thumbnails"):
            bank.__dict__["_thumb_files"] = self._thumb_files
        return bank

    # -- per-id look-ups ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.manifest["counts"]["items"])

    def locate(self, item_id: int) -> tuple[Segment, int] | None:
        item_id = int(item_id)
        if item_id in self.deltas.removed:
            return None
        k = bisect.bisect_right(self._starts, item_id) - 1
        if k < 0:
            return None
        seg = self.segments[k]
        r = seg.row_of(item_id)
        return (seg, r) if r >= 0 else None

    def _need(self, item_id: int) -> tuple[Segment, int]:
        found = self.locate(item_id)
        if found is None:
            raise NotFoundError(f"no item with id {item_id} in {self.path}; see `fakebank info`")
        return found

    def has(self, item_id: int) -> bool:
        return self.locate(item_id) is not None

    def id_of_sha256(self, sha256: str) -> int | None:
        for seg in reversed(self.segments):
            r = seg.row_of_sha256(sha256)
            if r >= 0:
                item_id = int(seg.ids[r])
                if item_id not in self.deltas.removed:
                    return item_id
        return None

    def ids_of_sha256(self, shas: Sequence[str]) -> np.ndarray:
        """`id_of_sha256` for many at once (-1: not in the bank): a vectorised search of each segment's key
        table and one bulk read of the candidates' sha256 to confirm them."""
        ids = np.full(len(shas), -1, np.int64)
        if not len(shas):
            return ids
        keys = sha_keys(shas)  # sorted (key, position)
        removed = self._removed_ids
        for k in range(len(self.segments) - 1, -1, -1):  # newest first, as id_of_sha256
            seg = self.segments[k]
            table = seg._sha_keys
            if not len(table):
                continue
            lo = np.searchsorted(table[:, 0], keys[:, 0])
            lo_c = np.minimum(lo, len(table) - 1)
            hit = np.flatnonzero((lo < len(table)) & (table[lo_c, 0] == keys[:, 0]))
            pos = keys[hit, 1]
            hit, pos = hit[ids[pos] < 0], pos[ids[pos] < 0]
            if not len(hit):
                continue
            cand = table[lo_c[hit], 1]
            stored = seg.column("sha256").take(pa.array(cand)).to_pylist()
            for p, r, st in zip(pos.tolist(), cand.tolist(), stored):
                if st != shas[p]:  # a 64-bit key collision: look among its equals
                    r = seg.row_of_sha256(shas[p])
                    if r < 0:
                        continue
                item_id = int(seg.ids[r])
                if len(removed) and removed[min(np.searchsorted(removed, item_id), len(removed) - 1)] == item_id:
                    continue
                ids[p] = item_id
        return ids

    def value(self, item_id: int, name: str):
        """One column's value for one item (its label with the analyst's override)."""
        if name == "label":
            return self.label_of(item_id)
        seg, r = self._need(item_id)
        edits = self.deltas.edits.get(int(item_id))
        if edits and name in edits:
            return edits[name]
        return seg.value(r, name)

    def is_hash_only(self, item_id: int) -> bool:
        seg, _ = self._need(item_id)
        return seg.hash_only

    def label_of(self, item_id: int) -> str:
        item_id = int(item_id)
        seg, r = self._need(item_id)
        return self.deltas.labels.get(item_id) or seg.value(r, "label")

    def item(self, item_id: int) -> dict:
        """An item's metadata (no vectors), JSON-friendly."""
        seg, r = self._need(item_id)
        rec = {c: seg.value(r, c) for c in META_COLUMNS}
        rec["label"] = self.deltas.labels.get(int(item_id), rec["label"])
        rec.update(self.deltas.edits.get(int(item_id), {}))
        rec["added_at"] = rec["added_at"].isoformat() if rec["added_at"] else None
        rec["pdq"] = rec["pdq"].hex() if rec["pdq"] else None
        return rec

    def thumbnail(self, item_id: int) -> bytes | None:
        """The item's thumbnail (JPEG, or WebP in older banks): stored at `add`, else made since by
        `fakebank thumbnails`; None: neither."""
        seg, r = self._need(item_id)
        return seg.value(r, "thumbnail") or self._side_thumbnail(int(item_id))

    def _side_thumbnail(self, item_id: int) -> bytes | None:
        for f in reversed(self._thumb_files):  # newest first
            thumb = f.get(item_id)
            if thumb is not None:
                return thumb
        return None

    @cached_property
    def _thumb_files(self) -> list[ThumbFile]:
        return [ThumbFile(self.path / name) for name in self.manifest.get("thumbnails", [])]

    def missing_thumbnails(self) -> list[int]:
        """Ids of the live items that have no thumbnail anywhere (reads null bitmaps and side-file ids only)."""
        have = np.concatenate([f.ids for f in self._thumb_files]) if self._thumb_files else np.zeros(0, np.int64)
        out = []
        for seg in self.segments:
            if seg.hash_only:  # a shared hash has no picture
                continue
            ids = seg.ids[seg.column("thumbnail").is_null().to_numpy(zero_copy_only=False)]
            ids = ids[~np.isin(ids, have)]
            out.extend(int(i) for i in ids if int(i) not in self.deltas.removed)
        return out

    def vector(self, kind: str, item_id: int) -> np.ndarray:
        seg, r = self._need(item_id)
        return np.asarray(seg.vectors(kind)[r], np.float32)

    def pdq_of(self, item_id: int) -> tuple[bytes, int]:
        seg, r = self._need(item_id)
        return seg.pdq_codes[r].tobytes(), int(seg.pdq_quality[r])

    def local_is_reduced(self, item_id: int) -> bool:
        """Whether the local index holds only the item's strongest descriptors (see LOCAL_REDUCE_ROWS)."""
        found = self.locate(item_id)
        return found is not None and found[0].local_reduced

    # -- searches (every shard, removed items hidden) -------------------------------------------------

    def search(self, kind: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(cosine similarities [Q, k], ids [Q, k]) over `cls` (exact within each shard's candidates);
        missing neighbours have id -1."""
        if kind != "cls":
            raise ValueError("only `cls` is searched by vector; campaigns read `patch` whole")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        q = len(queries)
        k = max(1, k)
        all_s, all_i = [np.full((q, k), -np.inf, np.float32)], [np.full((q, k), -1, np.int64)]
        for seg in self.segments:
            if seg.rows == 0 or seg.hash_only:
                continue
            extra = self._removed_in(seg)
            kk = min(seg.rows, k + extra)
            sims, rows = faiss_index.search_segment(seg.shard("cls"), seg.vectors("cls"), queries, kk)
            ids = np.where(rows >= 0, seg.ids[np.maximum(rows, 0)], -1)
            if extra:
                hidden = np.isin(ids, self._removed_ids)
                ids[hidden], sims[hidden] = -1, -np.inf
            all_s.append(sims), all_i.append(ids)
        sims, ids = np.concatenate(all_s, axis=1), np.concatenate(all_i, axis=1)
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)

    @cached_property
    def _removed_ids(self) -> np.ndarray:
        return np.array(sorted(self.deltas.removed), np.int64)

    def _removed_in(self, seg: Segment) -> int:
        """How many removed ids fall in the segment's id range (searches fetch that many more)."""
        ids = self._removed_ids
        return int(np.searchsorted(ids, seg.max_id, side="right") - np.searchsorted(ids, seg.min_id))

    def binary_within(self, kind: str, codes: np.ndarray, max_distance: int) -> list[list[tuple[int, int]]]:
        """Per query code, every (item id, Hamming distance ≤ max_distance) in the `pdq` or `pdq_trim` shards."""
        out: list[list[tuple[int, int]]] = [[] for _ in range(len(codes))]
        for seg in self.segments:
            mih = seg.shard(f"{kind}_mih") if max_distance <= faiss_index.MIH_MAX_DISTANCE else None
            if mih is not None:  # exact, sub-linear: hits are segment rows
                full = seg.pdq_codes if kind == "pdq" else seg.fixed_bytes("pdq_trim", PDQ_BYTES)
                for qi, hits in enumerate(faiss_index.mih_within(mih, full, codes, max_distance)):
                    for row, dist in hits:
                        item_id = int(seg.ids[row])
                        if item_id not in self.deltas.removed:
                            out[qi].append((item_id, dist))
                continue
            shard = seg.shard(kind)
            if shard.ntotal == 0:
                continue
            rows_of = seg.trim_rows if kind == "pdq_trim" else None
            for qi, hits in enumerate(faiss_index.binary_within(shard, codes, max_distance)):
                for pos, dist in hits:
                    item_id = int(seg.ids[rows_of[pos] if rows_of is not None else pos])
                    if item_id not in self.deltas.removed:
                        out[qi].append((item_id, dist))
        return out

    def frame_pdq_within(self, codes: np.ndarray, max_distance: int) -> list[dict[int, int]]:
        """Per query code, {video item id: smallest distance ≤ max_distance to any of its indexed frame
        hashes} (exact: multi-index hashing in segments of ≥ MIH_MIN_ROWS frames, a flat scan below)."""
        out: list[dict[int, int]] = [{} for _ in range(len(codes))]
        for seg in self.segments:
            flat = seg.shard("frame_pdq")
            if flat is None:
                continue
            full, rows = seg.frame_codes
            mih = seg.shard("frame_pdq_mih") if max_distance <= faiss_index.MIH_MAX_DISTANCE else None
            hits = (faiss_index.mih_within(mih, full, codes, max_distance) if mih is not None
                    else faiss_index.binary_within(flat, codes, max_distance))
            for qi, found in enumerate(hits):
                for pos, dist in found:
                    item_id = int(seg.ids[rows[pos]])
                    if item_id not in self.deltas.removed and dist < out[qi].get(item_id, 1 << 30):
                        out[qi][item_id] = dist
        return out

    def pdq_within(self, query_codes: np.ndarray, max_distance: int) -> list[list[tuple[int, int]]]:
        return self.binary_within("pdq", query_codes, max_distance)

    def local_quantizer(self):
        """The shared coarse cells of the local shards (an index over the centroids), or None before any."""
        entry = self.manifest.get("local_quantizer")
        if entry and self._quantizer is None:
            self._quantizer = faiss_index.build_binary_flat(np.load(self.path / entry["file"]))
        return self._quantizer

    def local_knn(self, desc: np.ndarray, k: int,
                  reduced_queries: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(Hamming distances [Q, k], local ids item_id << LOCAL_ID_BITS | rank) of the k nearest stored
        descriptors over every segment; missing ones have id -1. The query's descriptors are assigned
        to the shared cells once for every inverted-file shard. `reduced_queries` (a mask over `desc`):
        the only ones looked up in segments that index their items' strongest descriptors alone."""
        dists, ids = [np.full((len(desc), 0), 1 << 30, np.int32)], [np.full((len(desc), 0), -1, np.int64)]
        assigned = None
        strongest = np.flatnonzero(reduced_queries) if reduced_queries is not None else None
        for seg in self.segments:
            shard = seg.shard("local")
            if shard.ntotal == 0:
                continue
            rows = strongest if seg.local_reduced else None
            if seg.entry.get("local_ivf"):
                if assigned is None:
                    assigned = faiss_index.local_assign(self.local_quantizer(), desc)
                if rows is None:
                    d, i = faiss_index.local_search_preassigned(shard, desc, k, assigned)
                else:
                    d, i = np.full((len(desc), k), 1 << 30, np.int32), np.full((len(desc), k), -1, np.int64)
                    d[rows], i[rows] = faiss_index.local_search_preassigned(
                        shard, desc[rows], k, (assigned[0][rows], assigned[1][rows]))
            else:
                d, i = faiss_index.binary_knn(shard, desc, k)
            rows = np.maximum(i, 0) >> LOCAL_ID_BITS
            item = seg.ids[np.minimum(rows, seg.rows - 1)]
            local = np.where(i >= 0, (item << LOCAL_ID_BITS) | (np.maximum(i, 0) & ((1 << LOCAL_ID_BITS) - 1)), -1)
            if self.deltas.removed:
                local[np.isin(item, self._removed_ids)] = -1
            dists.append(d), ids.append(local)
        dist, found = np.concatenate(dists, axis=1), np.concatenate(ids, axis=1)
        if dist.shape[1] > k:  # the k nearest over all segments: answers do not depend on how they are cut
            dist = np.where(found >= 0, dist, 1 << 30)
            order = np.argsort(dist, axis=1, kind="stable")[:, :k]
            dist, found = np.take_along_axis(dist, order, 1), np.take_along_axis(found, order, 1)
        return dist, found

    def has_local(self) -> bool:
        return any(seg.shard("local").ntotal for seg in self.segments)

    def campaign_assignments(self) -> pa.Table | None:
        """The stored campaign assignments (id, campaign, origin) with later edits; None before any run.

        Rows of items removed since may remain: callers keep the ids the bank still has.
        """
        entry = self.manifest.get("campaigns")
        table = None
        if entry and entry.get("file"):
            try:
                table = pq.read_table(self.path / entry["file"], schema=CAMPAIGNS_SCHEMA)
            except FileNotFoundError:
                raise BankError(f"{self.path}: the campaign assignments changed while being read; retry") from None
        edits = self.deltas.campaigns
        if not edits:
            return table
        edited = pa.array(list(edits), pa.int64())
        kept = [] if table is None else [table.filter(pc.invert(pc.is_in(table.column("id"), value_set=edited)))]
        set_ = [(i, name) for i, name in edits.items() if name is not None]  # None: the edit cleared it
        added = pa.table({"id": pa.array([i for i, _ in set_], pa.int64()),
                          "campaign": pa.array([n for _, n in set_], pa.string()),
                          "origin": pa.array(["computed"] * len(set_), pa.string())}, schema=CAMPAIGNS_SCHEMA)
        return pa.concat_tables([*(t.cast(CAMPAIGNS_SCHEMA) for t in kept), added])

    def campaign_of(self, item_id: int) -> str | None:
        """The item's campaign as a query reports it: the analyst's (given at `add`), else the one the
        last `fakebank campaigns` run (and its later edits) assigned; None when neither."""
        return self.value(item_id, "campaign") or computed_campaign(self, item_id)

    # -- bulk reads that every store offers (bank.Bank and milvus_bank.MilvusBank) ------------------------

    @property
    def location(self) -> str:
        """Where the bank lives, for messages and export provenance."""
        return str(self.path.resolve())

    def read_columns(self, ids: Sequence[int], names: Sequence[str]) -> dict[str, list]:
        """Columns of many items at once, as `value` reads them (labels and edits applied), in the order of
        `ids`: one bulk read per segment. Every id must be in the bank."""
        ids = [int(i) for i in ids]
        out: dict[str, list] = {n: [None] * len(ids) for n in names}
        by_seg: dict[int, list[tuple[int, int]]] = {}
        for p, i in enumerate(ids):
            _, r = self._need(i)
            by_seg.setdefault(bisect.bisect_right(self._starts, i) - 1, []).append((p, r))
        for k, pos_rows in by_seg.items():
            seg = self.segments[k]
            take = pa.array([r for _, r in pos_rows], pa.int64())
            for n in names:
                for (p, _), v in zip(pos_rows, seg.column(n).take(take).to_pylist()):
                    out[n][p] = v
        for n in names:
            over = self.deltas.overrides(n)
            for p, i in enumerate(ids) if over else ():
                if i in over:
                    out[n][p] = over[i]
        return out

    def batches(self, names: Sequence[str]) -> Iterator[pa.Table]:
        """The live items' columns `names` (items_schema types; labels and edits applied), id-ordered, a
        segment at a time: whole-bank exports without holding the bank in memory."""
        schema = items_schema(self.dim)
        for seg, live in zip(self.segments, self._live):
            if not live.any():
                continue
            t = pa.Table.from_arrays([seg.column(n) for n in names],
                                     schema=pa.schema([schema.field(n) for n in names])).filter(pa.array(live))
            yield self.deltas.overlay(t, seg.ids[live])

    def recent_ids(self, n: int) -> list[int]:
        """The ids of the n newest live items, newest first (ids grow with time): newest segments only."""
        out: list[int] = []
        for seg in reversed(self.segments):
            for item_id in reversed(seg.ids.tolist()):
                if item_id not in self.deltas.removed:
                    out.append(item_id)
                    if len(out) == n:
                        return out
        return out

    # -- whole-bank arrays (campaigns, duplicate groups): built on first use -----------------------------

    @cached_property
    def _live(self) -> list[np.ndarray]:
        removed = np.fromiter(self.deltas.removed, np.int64, len(self.deltas.removed))
        return [~np.isin(s.ids, removed) if len(removed) else np.ones(s.rows, bool) for s in self.segments]

    @cached_property
    def ids(self) -> np.ndarray:
        parts = [s.ids[m] for s, m in zip(self.segments, self._live)]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def row(self, item_id: int) -> int:
        """The position of an item in the whole-bank arrays."""
        r = int(np.searchsorted(self.ids, int(item_id)))
        if r >= len(self.ids) or self.ids[r] != int(item_id):
            raise NotFoundError(f"no item with id {item_id} in {self.path}; see `fakebank info`")
        return r

    @cached_property
    def table(self) -> pa.Table:
        """Every live item's metadata columns (vectors: `vectors`; local features and dihedral hashes: by id)."""
        names = table_columns(self.dim)
        parts = [pa.Table.from_arrays([s.column(n) for n in names], names=names).filter(pa.array(m))
                 for s, m in zip(self.segments, self._live)]
        table = pa.concat_tables(parts) if parts else items_schema(self.dim).empty_table().select(names)
        return self.deltas.overlay(table, self.ids)

    @cached_property
    def vectors(self) -> dict[str, np.ndarray]:
        out = {}
        for kind in VECTOR_KINDS:
            parts = [s.vectors(kind)[m] for s, m in zip(self.segments, self._live)]
            out[kind] = np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)
        return out

    @cached_property
    def pdq_codes(self) -> np.ndarray:
        parts = [s.pdq_codes[m] for s, m in zip(self.segments, self._live)]
        return np.concatenate(parts) if parts else np.zeros((0, PDQ_BYTES), np.uint8)

    @cached_property
    def pdq_quality(self) -> np.ndarray:
        parts = [s.pdq_quality[m] for s, m in zip(self.segments, self._live)]
        return np.concatenate(parts).astype(np.int16) if parts else np.zeros(0, np.int16)

    @cached_property
    def labels(self) -> np.ndarray:
        return np.asarray(self.table.column("label").to_pylist(), dtype=object)


def _open_format_1(path: Path, manifest: dict) -> Bank:
    """A bank written by format 1 (Parquet segments, whole-bank indexes), read as is: one in-memory
    segment. The next writer migrates it to format 2."""
    dim = int(manifest["embedding_dim"])
    schema = items_schema(dim)
    tables = [pq.read_table(path / s["file"], schema=schema) for s in manifest["segments"]]
    table = (pa.concat_tables(tables) if tables else schema.empty_table()).combine_chunks()
    ids = table.column("id").to_numpy()
    entry = {"file": None, "rows": len(table), "min_id": int(ids.min()) if len(ids) else 1,
             "max_id": int(ids.max()) if len(ids) else 0}
    order = np.argsort(ids, kind="stable")
    if not np.array_equal(order, np.arange(len(ids))):
        table = table.take(pa.array(order))
    manifest = {**manifest, "segments": [entry], "deltas": []}
    return Bank(path, manifest, [Segment(path, entry, dim, table=table)], Deltas.empty())


def check_bank_path(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise BankError(f"{path} is a file, not a bank folder; pick another --bank")


def open_lock_file(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def folder_writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def read_manifest(path: Path) -> dict:
    mpath = path / MANIFEST
    if not mpath.is_file():
        if path.is_dir() and any(p.name != LOCK_FILE for p in path.iterdir()):
            raise BankError(f"{path}: not a fakebank bank (no {MANIFEST}); pick another --bank")
        raise BankError(f"no bank at {path}; create one with `fakebank add IMAGES --bank {path}`")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BankError(f"{mpath}: unreadable ({e}); restore the bank from a backup") from e
    if manifest.get("format_version") not in (1, FORMAT_VERSION):
        raise BankError(
            f"{path}: bank format {manifest.get('format_version')} but this fakebank reads 1 and {FORMAT_VERSION}; "
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


# -- the writer ----------------------------------------------------------------------------------------------

class BankWriter:
    """The one writer of a bank: holds the lock and commits atomically (each operation one commit)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        model_info: dict | None = None,
        embedding_dim: int | None = None,
        create: bool = True,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
        snapshot: Bank | None = None,
        auto_merge: bool = True,
    ) -> None:
        """`snapshot`: a Bank the caller already holds (and may keep searching from other threads); it is
        reused when it is still the latest commit. `auto_merge=False` leaves merging to `compact`."""
        self.path = Path(path)
        self._snapshot = snapshot
        self.auto_merge = auto_merge
        self.model_info = model_info
        self.embedding_dim = embedding_dim
        self.create = create
        self.lock_timeout = lock_timeout
        self._lock_fd: int | None = None
        self.bank: Bank | None = None
        self._centroids: np.ndarray | None = None
        self._quantizer_entry: dict | None = None  # trained by this writer, not yet in a manifest

    def __enter__(self) -> BankWriter:
        check_bank_path(self.path)
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
            latest = read_manifest(self.path)
            snap = self._snapshot
            if snap is not None and snap.manifest["generation"] == latest["generation"] \
                    and latest["format_version"] == FORMAT_VERSION:
                self.bank = snap
            else:
                self.bank, self._snapshot = Bank.open(self.path), None
            if self.model_info is not None:
                check_model(self.bank.manifest, self.model_info, self.path)
            entry = self.bank.manifest.get("local_quantizer")
            if entry:
                self._centroids = np.load(self.path / entry["file"])
            if self.bank.manifest["format_version"] == 1:
                self._migrate()
            self._sweep()
        except BaseException:
            self._release_lock()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._release_lock()

    # -- operations (each one commit) ------------------------------------------------------------

    def add(self, items: Sequence[NewItem]) -> list[int]:
        """Append items (callers skip known sha256s) as one commit; returns their new ids. Images and
        hash-only items go to separate segments (a hash-only segment stores no embedding columns)."""
        return self.apply(items)

    def apply(self, items: Sequence[NewItem], changes: Sequence[tuple[int, str, str | None]] = (),
              settings: dict | None = None) -> list[int]:
        """Add `items`, apply delta `changes` (label, remove, campaign, EDIT_OPS) to existing ones and store manifest
        `settings`, all in one commit: a hash list's import or sync lands whole or not at all."""
        assert self.bank is not None
        if not items and not changes and not settings:
            return []
        manifest = dict(self.bank.manifest)
        counts = self._counts_after(changes)
        for key in settings or {}:
            if key in BOOKKEEPING:
                raise BankError(f"{key!r} is bank bookkeeping, not a setting")
        manifest.update(settings or {})
        dim = self.bank.dim
        for it in items:
            check_new_item(it, dim, self.path)
        # ids follow the input order; a run of one kind is one segment (id ranges stay disjoint and sorted)
        runs: list[list[NewItem]] = []
        for it in items:
            if runs and runs[-1][0].hash_only == it.hash_only:
                runs[-1].append(it)
            else:
                runs.append([it])
        first = next_id = int(manifest["next_id"])
        gen = manifest["generation"] + 1
        if not items:
            manifest["counts"] = counts
            self._commit_delta(list(changes), counts, manifest)
            return []
        now = datetime.now(timezone.utc)
        entries, segments = [], []
        for n, run in enumerate(runs):
            table = _items_table(run, range(next_id, next_id + len(run)), now, dim)
            entry, seg = self._write_segment(table, gen, n)
            entries.append(entry)
            segments.append(seg)
            next_id += len(run)
        manifest["segments"] = manifest["segments"] + entries
        manifest["next_id"] = next_id
        counts["items"] += len(items)
        for it in items:
            counts[it.label] += 1
        hashes = sum(it.hash_only for it in items)
        if hashes:
            counts[HASH_ONLY_COUNT] = counts.get(HASH_ONLY_COUNT, 0) + hashes
        manifest["counts"] = counts
        if changes:
            deltas = self.bank.deltas.copy()
            deltas.apply(*zip(*changes))
            manifest["deltas"] = self._delta_files(manifest, list(changes), deltas, gen)
            self._commit(manifest, gen, segments=[*self.bank.segments, *segments], deltas=deltas)
        elif len(segments) == 1:
            self._commit(manifest, gen, appended=segments[0])
        else:
            self._commit(manifest, gen, segments=[*self.bank.segments, *segments])
        if self.auto_merge:
            self._merge_tiers()
        return list(range(first, next_id))

    def _counts_after(self, changes: Sequence[tuple[int, str, str | None]]) -> dict:
        """The manifest's counts once `changes` apply, each id counted once for its net effect (later
        changes win; a removed id stays removed, as Deltas.apply reads them)."""
        assert self.bank is not None
        final: dict[int, str | None] = {}  # id → its label after the changes; None: removed
        for i, op, v in changes:
            if op == "label":
                check_label(v)
            elif op == "remove":
                v = None
            elif op in EDIT_OPS or op == "campaign":
                self.bank._need(i)  # raises NotFoundError naming an unknown id
                continue
            else:
                raise BankError(f"unknown change {op!r}")
            if final.get(i, "") is not None:
                final[i] = v
        counts = dict(self.bank.manifest["counts"])
        for i, label in final.items():
            counts[self.bank.label_of(i)] -= 1  # raises NotFoundError naming an unknown id
            if label is not None:
                counts[label] += 1
                continue
            counts["items"] -= 1
            if self.bank.is_hash_only(i):
                counts[HASH_ONLY_COUNT] -= 1
        return counts

    def set_label(self, ids: Iterable[int], label: str) -> None:
        self.apply((), [(i, "label", label) for i in dict.fromkeys(int(i) for i in ids)])

    def remove(self, ids: Iterable[int]) -> None:
        self.apply((), [(i, "remove", None) for i in dict.fromkeys(int(i) for i in ids)])

    def set_campaigns(self, assignments: dict[int, str | None]) -> None:
        """Set (None: clear) the computed campaign of the given items, as a delta over the stored run.

        Never touches the analyst's `campaign` column: those values are ground truth given at `add` time.
        """
        assert self.bank is not None
        for i in assignments:
            self.bank._need(i)  # raises NotFoundError naming an unknown id
        self._commit_delta([(int(i), "campaign", name) for i, name in assignments.items()],
                           dict(self.bank.manifest["counts"]))

    def commit_campaigns(self, assignments: pa.Table, info: dict, clustered: Bank | None = None) -> None:
        """Store a campaign run's assignments (CAMPAIGNS_SCHEMA) and its `info` in one atomic commit.

        The campaign edits of `clustered` (the snapshot the run clustered; None: this one) were its input
        and are folded into it, so they are cleared; an edit made while the run clustered stays, on top.
        """
        assert self.bank is not None
        manifest = dict(self.bank.manifest)
        gen = manifest["generation"] + 1
        name = f"campaigns-{gen:06d}.parquet"
        self._write_parquet(assignments.cast(CAMPAIGNS_SCHEMA), name)
        manifest["campaigns"] = {**info, "file": name, "assigned": len(assignments)}
        deltas = self.bank.deltas
        seen = (clustered or self.bank).deltas.campaigns
        unseen = {i: v for i, v in deltas.campaigns.items() if i not in seen or seen[i] != v}
        if deltas.campaigns != unseen:
            folded = deltas.copy()
            folded.campaigns = unseen
            manifest["deltas"] = self._fold_deltas(folded, gen)
            self._commit(manifest, gen, deltas=folded)
        else:
            self._commit(manifest, gen)

    def add_thumbnails(self, thumbs: dict[int, bytes]) -> None:
        """Store thumbnails made after their items were added: one new side file, one commit. The newest
        side files are folded into it while none is larger than what it holds (a binary counter: O(log n)
        files, each thumbnail rewritten O(log n) times); removed items are dropped as they are folded."""
        assert self.bank is not None
        if not thumbs:
            return
        for i in thumbs:
            self.bank._need(i)  # raises NotFoundError naming an unknown id
        manifest = dict(self.bank.manifest)
        gen = manifest["generation"] + 1
        files, held = list(manifest.get("thumbnails", [])), list(self.bank._thumb_files)
        thumbs = dict(thumbs)
        while held and len(held[-1].ids) <= len(thumbs):
            older = held.pop().items()
            files.pop()
            thumbs = {i: t for i, t in older.items() if i not in self.bank.deltas.removed} | thumbs  # newer win
        name = f"thumbs-{gen:06d}.arrow"
        _write_arrow(self.path / name, thumbs_table(thumbs))
        manifest["thumbnails"] = files + [name]
        self._commit(manifest, gen)

    def set_manifest_entry(self, key: str, value: dict) -> None:
        """Store a settings record (e.g. the near-duplicate thresholds, "dedup") in the manifest, one commit."""
        assert self.bank is not None
        if key in BOOKKEEPING:
            raise BankError(f"{key!r} is bank bookkeeping, not a setting")
        manifest = dict(self.bank.manifest)
        manifest[key] = value
        self._commit(manifest, manifest["generation"] + 1)

    def set_fusion(self, fusion: dict) -> None:
        self.set_manifest_entry("fusion", fusion)

    def compact(self, progress=None) -> dict:
        """Merge every segment into as few as possible (≤ MAX_SEGMENT_ROWS rows each), dropping removed
        items and folding labels and deltas in. Explicit (`fakebank compact`): its cost is the bank's size."""
        assert self.bank is not None
        before = len(self.bank.segments), len(self.bank.manifest.get("deltas", []))
        groups, current, size = [], [], 0
        for seg in self.bank.segments:
            if current and (size + seg.rows > MAX_SEGMENT_ROWS or seg.hash_only != current[0].hash_only):
                groups.append(current)
                current, size = [], 0
            current.append(seg)
            size += seg.rows
        if current:
            groups.append(current)
        deltas = self.bank.deltas
        keep = Deltas({}, set(), dict(deltas.campaigns))  # campaign edits stay deltas over the stored run
        manifest = dict(self.bank.manifest)
        gen = manifest["generation"] + 1
        entries, segments = [], []
        for n, group in enumerate(groups):
            entry, seg = self._merge(group, gen, n, deltas)
            if entry is not None:
                entries.append(entry)
                segments.append(seg)
            if progress is not None:
                progress(sum(s.rows for s in group))
        manifest["segments"] = entries
        manifest["deltas"] = self._fold_deltas(keep, gen) if keep.campaigns else []
        manifest["thumbnails"] = []  # every live row's side thumbnail was folded into its merged segment
        self._commit(manifest, gen, segments=segments, deltas=keep)
        return {"segments_before": before[0], "segments_after": len(entries), "delta_files_before": before[1],
                "delta_files_after": len(manifest["deltas"]), "items": len(self.bank)}

    # -- merging ------------------------------------------------------------------------------------

    def _merge_tiers(self) -> None:
        """Merge the newest MERGE_FANOUT segments while they share a size tier (bounded by AUTO_MERGE_MAX_ROWS)."""
        while True:
            segs = self.bank.segments
            if len(segs) < MERGE_FANOUT:
                return
            tail = segs[-MERGE_FANOUT:]
            tiers = {_tier(s.rows) for s in tail}
            total = sum(s.rows for s in tail)
            if len(tiers) != 1 or total > AUTO_MERGE_MAX_ROWS or len({s.hash_only for s in tail}) != 1:
                return
            manifest = dict(self.bank.manifest)
            gen = manifest["generation"] + 1
            entry, seg = self._merge(tail, gen, 0, self.bank.deltas)
            manifest["segments"] = [s.entry for s in segs[:-MERGE_FANOUT]] + ([entry] if entry else [])
            self._commit(manifest, gen, segments=[*segs[:-MERGE_FANOUT], *([seg] if seg else [])])

    def _merge(self, group: list[Segment], gen: int, n: int, deltas: Deltas) -> tuple[dict | None, Segment | None]:
        """One segment of the live rows of `group` (all of one kind), labels and edits folded in."""
        schema = hash_only_schema(self.bank.dim) if group[0].hash_only else items_schema(self.bank.dim)
        removed = np.fromiter(deltas.removed, np.int64, len(deltas.removed))
        parts = []
        for seg in group:
            t = seg.table
            if len(removed):
                t = t.filter(pa.array(~np.isin(seg.ids, removed)))
            parts.append(t.cast(schema))
        table = pa.concat_tables(parts).combine_chunks() if parts else schema.empty_table()
        if not len(table):
            return None, None
        table = deltas.overlay(table, table.column("id").to_numpy())
        if self.bank._thumb_files and "thumbnail" in table.schema.names:  # side thumbnails move into the merged segment's column
            thumbs = table.column("thumbnail").to_pylist()
            ids = table.column("id").to_pylist()
            thumbs = [t if t is not None else self.bank._side_thumbnail(i) for i, t in zip(ids, thumbs)]
            table = table.set_column(table.schema.get_field_index("thumbnail"), "thumbnail", pa.array(thumbs, pa.binary()))
        return self._write_segment(table, gen, n)

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
            "deltas": [],
            "fusion": None,
            "counts": {"items": 0, **{label: 0 for label in LABELS}},
        }

    def _write_segment(self, table: pa.Table, gen: int, n: int = 0) -> tuple[dict, Segment]:
        """Write a segment and its shards (tmp, fsync, rename each); returns its manifest entry and the
        segment, mapped from the file just written."""
        name = f"seg-{gen:06d}" + (f"-{n:03d}" if n else "")
        ids = table.column("id").to_numpy()
        if len(ids) > 1 and not (np.diff(ids) > 0).all():
            table = table.take(pa.array(np.argsort(ids, kind="stable")))
            ids = table.column("id").to_numpy()
        def write_arrow(tmp: Path) -> None:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as out:
                out.write_table(table, max_chunksize=max(1, len(table)))

        _write_whole(self.path / f"{name}.arrow", write_arrow)
        entry = {"file": f"{name}.arrow", "rows": len(table), "min_id": int(ids[0]), "max_id": int(ids[-1]),
                 "shards": {}}
        if "cls" not in table.schema.names:
            entry["hash_only"] = True
        _write_npy(self.path / f"{name}.sha.npy", sha_keys(table.column("sha256").to_pylist()))
        entry["sha"] = f"{name}.sha.npy"
        seg = Segment(self.path, entry, self.bank.dim)
        seg.map_files()  # snapshots handed out from this writer hold its files like opened ones do
        self._ensure_local_quantizer(seg, gen)
        entry["local_ivf"] = self._centroids is not None
        for kind in SHARD_KINDS:
            shard = build_shard(seg, kind, self._centroids)
            if shard is None:
                continue
            fname = f"{name}.{kind}" + (".npy" if kind in MIH_KINDS else ".faiss")
            if kind in MIH_KINDS:
                _write_npy(self.path / fname, shard)
            else:
                _write_whole(self.path / fname, lambda tmp: faiss_index.save(shard, tmp))
            entry["shards"][kind] = fname
            seg._shards[kind] = shard
        seg.map_files()
        return entry, seg

    def _ensure_local_quantizer(self, seg: Segment, gen: int) -> None:
        """Train the shared local cells once, when the bank's descriptors first pass LOCAL_EXACT_LIMIT
        (below, exact search is cheap); sampled from this segment and the newest ones before it."""
        if self._centroids is not None:
            return
        codes, _ = local_rows(seg.column("local"))
        total = len(codes) + sum(int(s.entry.get("local_descriptors", 0)) for s in self.bank.segments)
        seg.entry["local_descriptors"] = len(codes)
        if total < faiss_index.LOCAL_EXACT_LIMIT:
            return
        nlist = faiss_index.local_nlist(total)
        sample = [codes]
        for old in reversed(self.bank.segments):
            if sum(len(c) for c in sample) >= 20 * nlist:
                break
            sample.append(local_rows(old.column("local"))[0])
        centroids = faiss_index.train_local_quantizer(np.concatenate(sample), nlist)
        name = f"localq-{gen:06d}.npy"
        _write_npy(self.path / name, centroids)
        self._centroids = centroids
        self._quantizer_entry = {"file": name, "nlist": nlist, "trained_on": total}

    def _write_parquet(self, table: pa.Table, name: str) -> None:
        _write_whole(self.path / name, lambda tmp: pq.write_table(table, tmp, compression="zstd"))

    def _commit_delta(self, changes: list[tuple[int, str, str | None]], counts: dict,
                      manifest: dict | None = None) -> None:
        assert self.bank is not None
        manifest = dict(manifest or self.bank.manifest)
        gen = manifest["generation"] + 1
        deltas = self.bank.deltas.copy()
        if changes:
            deltas.apply(*zip(*changes))
            manifest["deltas"] = self._delta_files(manifest, changes, deltas, gen)
        manifest["counts"] = counts
        self._commit(manifest, gen, deltas=deltas)

    def _delta_files(self, manifest: dict, changes: list, deltas: Deltas, gen: int) -> list[str]:
        """The manifest's delta files with `changes` written as one more (or all folded into one)."""
        files = list(manifest.get("deltas", []))
        if len(files) + 1 > MAX_DELTA_FILES:
            return self._fold_deltas(deltas, gen)
        name = f"delta-{gen:06d}.parquet"
        self._write_parquet(delta_table(changes), name)
        return [*files, name]

    def _fold_deltas(self, deltas: Deltas, gen: int) -> list[str]:
        name = f"delta-{gen:06d}.parquet"
        self._write_parquet(delta_table(deltas.changes()), name)
        return [name]

    def _commit(self, manifest: dict, gen: int, *, appended: Segment | None = None,
                segments: list[Segment] | None = None, deltas: Deltas | None = None) -> None:
        """Write the manifest (the commit point), then move the in-memory snapshot to the new state."""
        assert self.bank is not None
        manifest["generation"] = gen
        manifest["updated_at"] = datetime.now(timezone.utc).isoformat()
        manifest["format_version"] = FORMAT_VERSION
        if self._quantizer_entry and not manifest.get("local_quantizer"):
            manifest["local_quantizer"] = self._quantizer_entry
        if self.model_info is not None and manifest.get("model") is None:
            manifest["model"] = self.model_info
        self._write_manifest(manifest)
        if appended is not None:
            self.bank = self.bank.with_segment(manifest, appended)
        else:
            segs = segments if segments is not None else self.bank.segments
            self.bank = Bank(self.path, manifest, segs, deltas if deltas is not None else self.bank.deltas)
        self._sweep()

    def _migrate(self) -> None:
        """Rewrite a format-1 bank as format 2 (once, by the first writer that opens it)."""
        assert self.bank is not None
        old = self.bank
        manifest = {k: v for k, v in old.manifest.items() if k != "indexes"}
        gen = manifest["generation"] + 1
        table = old.segments[0].table
        entries, segments = [], []
        for n, start in enumerate(range(0, len(table), MAX_SEGMENT_ROWS)):
            entry, seg = self._write_segment(table.slice(start, MAX_SEGMENT_ROWS).combine_chunks(), gen, n)
            entries.append(entry)
            segments.append(seg)
        manifest["segments"] = entries
        manifest["deltas"] = []
        labels = table.column("label").to_pylist()
        manifest["counts"] = {"items": len(table), **{label: labels.count(label) for label in LABELS}}
        self._commit(manifest, gen, segments=segments, deltas=Deltas.empty())

    def _write_manifest(self, manifest: dict) -> None:
        _write_whole(self.path / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True)))
        _fsync(self.path)

    def _sweep(self) -> None:
        """Delete files that no manifest names (left by a crashed or superseded commit)."""
        assert self.bank is not None
        m = self.bank.manifest
        live = set()
        for s in m["segments"]:
            live |= {s.get("file"), s.get("sha"), *s.get("shards", {}).values()}
        live |= set(m.get("deltas", [])) | set(m.get("thumbnails", []))
        live |= {(m.get("campaigns") or {}).get("file"), (m.get("local_quantizer") or {}).get("file")}
        if m["format_version"] == 1:
            return  # a format-1 bank read as is: its files are named differently
        for p in self.path.iterdir():
            if _OWNED_FILE.match(p.name) and p.name not in live and p.name != MANIFEST + ".tmp":
                p.unlink(missing_ok=True)

    # -- lock ---------------------------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        why = None
        try:
            fd = open_lock_file(self.path / LOCK_FILE)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            why = f"{e.strerror} on {LOCK_FILE}" + (", a read-only mount" if e.errno == errno.EROFS else "")
        else:
            if not folder_writable(self.path):
                os.close(fd)
                why = "the folder is not writable for this user"
        if why is not None:
            raise ReadOnlyError(f"{self.path} is read-only here ({why}): it can be queried but not changed; "
                                "write to a copy you own, or ask the bank's owner")
        deadline = time.monotonic() + self.lock_timeout
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not said and time.monotonic() >= deadline - self.lock_timeout + LOCK_QUIET_S:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                    logging.getLogger("fakebank").warning(
                        "%s is being written by another fakebank process (pid %s); waiting up to %.0f s for it",
                        self.path, holder, self.lock_timeout)
                    said = True
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


def _tier(rows: int) -> int:
    tier, bound = 0, MERGE_FANOUT
    while rows >= bound:
        tier += 1
        bound *= MERGE_FANOUT
    return tier


def _items_table(items: Sequence[NewItem], ids: Sequence[int], now: datetime, dim: int) -> pa.Table:
    """The rows of one run of items, all images or all hash-only (then without the pixel columns). Every
    column but `id`, `added_at` and the vectors is the NewItem field of the same name."""
    hash_only = items[0].hash_only
    if hash_only and any(getattr(it, c) is not None for it in items for c in _PIXEL_COLUMNS):
        raise BankError("a hash-only item carries only its hash and metadata, no pixel signals")
    schema = hash_only_schema(dim) if hash_only else items_schema(dim)
    columns = []
    for f in schema:
        if f.name == "id":
            columns.append(pa.array(list(ids), pa.int64()))
        elif f.name == "added_at":
            columns.append(pa.array([now] * len(items), f.type))
        elif f.name in VECTOR_KINDS:
            columns.append(_vector_array([getattr(it, f.name) for it in items], dim))
        else:
            columns.append(pa.array([getattr(it, f.name) for it in items], f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _vector_array(vectors: list[np.ndarray], dim: int) -> pa.FixedSizeListArray:
    flat = pa.array(np.stack(vectors).astype(np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, dim)


def _write_whole(path: Path, write) -> None:
    """`write(tmp)` beside `path`, fsync, rename: the file appears whole or not at all."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    _fsync(tmp)
    os.replace(tmp, path)


def _write_arrow(path: Path, table: pa.Table) -> None:
    def write(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as out:
            out.write_table(table, max_chunksize=max(1, len(table)))

    _write_whole(path, write)


def _write_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    _write_whole(path, write)


def _fsync(path: Path) -> None:
    """fsync a file's data, or a folder's entries (so that a rename inside it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
