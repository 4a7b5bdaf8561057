"""The bank on Milvus: the reader and writer surface of bank.Bank / bank.BankWriter over pymilvus'
`MilvusClient`, for banks that outgrow one machine (a Milvus server or cluster) and, in tests, Milvus Lite.

Sits beside bank.py (after embed, before decide/dedup/campaigns); store.py picks one of the two. Never
imports torch or the model. Collections of a bank named NAME:

    NAME_items      one row an item: id (primary key), sha256, label, media, added_at (µs), pdq
                    BINARY_VECTOR(256) (HAMMING, BIN_FLAT), pdq_quality (-1: none), cls and patch
                    FLOAT_VECTOR (IP, FLAT; zeros for a hash-only item, which searches skip), the nullable
                    metadata (path, source, campaign, note, p_fake, logit, width, height, tags, external_id,
                    pdq_trim_quality, a video's duration_s and fps) in one JSON field `meta` (Milvus Lite has
                    no nullable scalars), pdq_dihedral hex, the local features and the thumbnail
                    base64-encoded ("" : none)
    NAME_trim       the de-bordered PDQ of the ≈ 1 in 5 items whose hash differs from the whole image's
    NAME_local      one row per ORB descriptor: lid = item id << LOCAL_ID_BITS | rank, item, desc (HAMMING)
    NAME_frame_pdq  a video's indexed frame hashes (video.index_codes), one row each: auto pk, item, pdq
                    (HAMMING, BIN_FLAT); a bank made before videos were stored lacks it (and NAME_frames)
                    until its first video, and reads as holding no videos meanwhile
    NAME_frames     a video's sampled frames (video.pack_frames, up to ≈ 1 MB: more than one VARCHAR's
                    65,535) base64-encoded in parts: id = item id << FRAME_PART_BITS | part, item, data
    NAME_meta       the manifest, one row per top-level key (JSON text); counts are counted, not stored
    NAME_campaigns  the computed campaign assignments (id, campaign, origin)

Every read and write uses Strong consistency (read-after-write on servers, which default to Bounded).
An item's row is written last, after its descriptors, de-bordered hash and video frames: a sha256 that
reads as present has all its signals (rows without an item are never reported), so an `add` killed at
any instant loses nothing acknowledged and a rerun completes it. A removal deletes the item row first.
Ids are reserved in the manifest before rows are written (a crash leaves a gap, never a reused id).

What Milvus does not give: multi-collection transactions (an import's additions and label changes land as
several writes, each durable) and a writer lock (run one writer per bank, as with the folder's flock).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa

from fakebank.bank import (
    CAMPAIGNS_SCHEMA, EDIT_COLUMN, EDIT_OPS, HASH_ONLY, HASH_ONLY_COUNT, LABELS, LOCAL_ID_BITS, PDQ_BYTES, PDQ_DIHEDRAL_BYTES,
    SHARED_HASH_QUALITY, VECTOR_KINDS, VIDEO, NewItem, check_label, check_model, check_new_item, computed_campaign,
    items_schema,
    BOOKKEEPING, META_COLUMNS, table_columns,
)
from fakebank.errors import BankError, NotFoundError, UsageError

MILVUS_FORMAT = "milvus-1"
DEFAULT_COLLECTION = "fakebank"
TOKEN_ENV = "FAKEBANK_MILVUS_TOKEN"
CONSISTENCY = "Strong"
MAX_LIMIT = 16_384  # Milvus' cap on a search's `limit` (and so on one range search's hits)
MAX_VARCHAR = 65_535
# Milvus Lite starts a server process per file; on a loaded machine its first connection can time out
LITE_START_TRIES = 3
BATCH = 1_000  # rows per insert/query request and ids per `in [...]` filter
LOCAL_MAX = 1 << LOCAL_ID_BITS
# parts of one video's frames blob: 65,536 × 49 KB ≈ 3 GB (video.DEFAULT_MAX_FRAMES frames make ≈ 1 MB)
FRAME_PART_BITS = 16
FRAME_PART_BYTES = MAX_VARCHAR // 4 * 3  # raw bytes whose base64 fits one VARCHAR
# Frame parts are ≈ 64 KB rows: a few per request, well under gRPC's message limits (BATCH of them is 64 MB)
FRAME_PART_BATCH = 32
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,200}$")
# Metadata kept in the JSON `meta` field, each possibly null
_JSON_COLUMNS = ("path", "source", "campaign", "note", "p_fake", "logit", "width", "height", "tags",
                 "external_id", "pdq_trim_quality")
_VIDEO_JSON_COLUMNS = ("duration_s", "fps")  # float32 in the folder's table; kept in `meta` as those values
_VIDEO_BLOBS = ("frames", "frame_pdq")  # in the video collections (NAME_frames, NAME_frame_pdq)
_HEAVY = ("cls", "patch", "local", "thumbnail", "pdq_dihedral", "pdq_trim", "patch_grid")  # read in bulk, never cached
_ROW_FIELDS = ["id", "sha256", "label", "media", "added_at", "pdq", "pdq_quality", "meta"]


_CLIENTS: dict[tuple[str, str | None], object] = {}


def _client(uri: str, token: str | None):
    """One client per (URI, token) in a process: Milvus Lite serves a file to one process, through one
    server that every client of that file in the process shares."""
    if (uri, token) in _CLIENTS:
        return _CLIENTS[uri, token]
    try:
        from pymilvus import MilvusClient
    except ImportError as e:
        raise BankError("the Milvus store needs pymilvus: pip install 'fakebank[milvus]'") from e
    # pymilvus logs a warning per Milvus Lite iterator ("failed to get mvccTs"): its fallback is the one wanted
    logging.getLogger("pymilvus").setLevel(logging.ERROR)
    for attempt in range(LITE_START_TRIES if "://" not in uri else 1):
        try:
            client = _CLIENTS[uri, token] = MilvusClient(uri=uri, token=token or "")
            return client
        except Exception as e:  # pymilvus raises its own kinds for refused connections, missing milvus-lite …
            error = e
            time.sleep(1.0 + attempt)
    raise BankError(f"cannot reach Milvus at {uri} ({error}); check the URI (--store) and that the server "
                    f"runs, and {TOKEN_ENV} for a server with authentication") from error


class MilvusStore:
    """One bank in one Milvus (a server URI or a Milvus Lite file) under a collection name prefix."""

    kind = "milvus"

    def __init__(self, uri: str, name: str = DEFAULT_COLLECTION, token: str | None = None) -> None:
        self.write_lock = threading.Lock()  # one writer per process (Milvus itself has no writer lock)
        if not _NAME.match(name):
            raise UsageError(f"Milvus collection name {name!r}: use letters, digits and underscores")
        self.uri, self.name, self.token = uri, name, token
        self.items, self.trim, self.local = f"{name}_items", f"{name}_trim", f"{name}_local"
        self.meta, self.campaigns = f"{name}_meta", f"{name}_campaigns"
        self.frame_pdq, self.frames = f"{name}_frame_pdq", f"{name}_frames"
        self._snapshot: MilvusBank | None = None
        self._snapshot_lock = threading.Lock()

    @cached_property
    def client(self):
        if "://" not in self.uri:  # a Milvus Lite file: its folder is made like a bank folder's
            Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
        return _client(self.uri, self.token)

    @property
    def location(self) -> str:
        return f"{self.uri}#{self.name}"

    @property
    def spec(self) -> str:
        """The store spec that names this store again (store.open_store)."""
        if "://" not in self.uri:
            return f"milvus-lite:{self.uri}#{self.name}"
        scheme, rest = self.uri.split("://", 1)
        return f"{'milvus+https' if scheme == 'https' else 'milvus'}://{rest}/{self.name}"

    @property
    def shared_readers(self) -> bool:
        """Whether other processes may read it meanwhile (a server: yes; a Milvus Lite file: one process)."""
        return "://" in self.uri

    def exists(self) -> bool:
        return self.client.has_collection(self.meta)

    def read_manifest(self) -> dict:
        if not self.exists():
            raise BankError(f"no bank at {self.location}; create one with `fakebank add IMAGES --store ...`")
        rows = self.client.query(self.meta, filter='key != ""', output_fields=["key", "value"],
                                 consistency_level=CONSISTENCY)
        manifest = {r["key"]: json.loads(r["value"]) for r in rows}
        if manifest.get("format_version") != MILVUS_FORMAT:
            raise BankError(f"{self.location}: Milvus bank format {manifest.get('format_version')} but this "
                            f"fakebank reads {MILVUS_FORMAT}; use the fakebank version that wrote it")
        manifest["counts"] = self._counts()
        return manifest

    def count(self, collection: str, expr: str = "") -> int:
        res = self.client.query(collection, filter=expr, output_fields=["count(*)"], consistency_level=CONSISTENCY)
        return int(res[0]["count(*)"])

    def _counts(self) -> dict:
        counts = {"items": self.count(self.items)}
        for label in LABELS:
            counts[label] = self.count(self.items, f'label == "{label}"')
        counts[HASH_ONLY_COUNT] = self.count(self.items, f'media == "{HASH_ONLY}"')
        return counts

    def open(self) -> MilvusBank:
        return MilvusBank(self, self.read_manifest())

    def snapshot(self) -> MilvusBank:
        """The bank as of the latest commit, reopened only when a writer (of any process) committed since:
        one query for the manifest's generation instead of the manifest and its counts (six queries, the
        counts a scan each on a large bank) and a cold row cache on every request."""
        held = self._snapshot
        if held is not None and self._commit_key(held.manifest) == self._stored_commit_key():
            return held
        with self._snapshot_lock:
            if self._snapshot is held:  # else another thread reopened it meanwhile
                self._snapshot = self.open()
            return self._snapshot

    @staticmethod
    def _commit_key(manifest: dict) -> tuple:
        """What changes with every commit: the generation; and with a bank dropped and made again, its
        creation time (its generation starts again at 0)."""
        return manifest.get("generation"), manifest.get("created_at")

    def _stored_commit_key(self) -> tuple:
        rows = self.client.query(self.meta, filter='key in ["generation", "created_at"]',
                                 output_fields=["key", "value"], consistency_level=CONSISTENCY)
        return self._commit_key({r["key"]: json.loads(r["value"]) for r in rows})

    def held(self) -> None:
        return None

    def publish(self, bank) -> None:
        pass

    def writer(self, *, model_info: dict | None = None, embedding_dim: int | None = None, create: bool = True,
               snapshot=None) -> MilvusWriter:
        return MilvusWriter(self, model_info=model_info, embedding_dim=embedding_dim, create=create)

    def info_storage(self, manifest: dict) -> dict:
        return {"storage": {"store": "milvus", "uri": self.uri, "collection": self.name,
                            "rows": {c: self.count(c) for c in (self.items, self.trim, self.local, self.campaigns,
                                                                self.frame_pdq, self.frames)
                                     if self.client.has_collection(c)}},
                "bytes_on_disk": 0}  # the server's to report

    # -- creation ----------------------------------------------------------------------------------

    def _make(self, name: str, fields: list, indexes: list, auto_id: bool = False) -> None:
        from pymilvus import MilvusClient

        schema = MilvusClient.create_schema(auto_id=auto_id, enable_dynamic_field=False)
        for args, kw in fields:
            schema.add_field(*args, **kw)
        params = self.client.prepare_index_params()
        for field, index, metric in indexes:
            params.add_index(field, index_type=index, metric_type=metric)
        if not self.client.has_collection(name):
            self.client.create_collection(name, schema=schema, index_params=params, consistency_level=CONSISTENCY)

    def create(self, dim: int) -> None:
        from pymilvus import DataType

        make = self._make
        V, B, I64 = DataType.FLOAT_VECTOR, DataType.BINARY_VECTOR, DataType.INT64
        S = DataType.VARCHAR
        make(self.items, [
            (("id", I64), {"is_primary": True}), (("sha256", S), {"max_length": 64}),
            (("label", S), {"max_length": 16}), (("media", S), {"max_length": 16}),
            (("added_at", I64), {}), (("pdq", B), {"dim": PDQ_BYTES * 8}), (("pdq_quality", DataType.INT32), {}),
            (("cls", V), {"dim": dim}), (("patch", V), {"dim": dim}), (("meta", DataType.JSON), {}),
            (("pdq_dihedral", S), {"max_length": 2 * PDQ_DIHEDRAL_BYTES}),
            (("local", S), {"max_length": MAX_VARCHAR}), (("thumbnail", S), {"max_length": MAX_VARCHAR}),
            (("patch_grid", S), {"max_length": 4096}),  # grid.PatchGrid.to_bytes(), base64 ("": none)
        ], [("cls", "FLAT", "IP"), ("patch", "FLAT", "IP"), ("pdq", "BIN_FLAT", "HAMMING")])
        make(self.trim, [(("id", I64), {"is_primary": True}), (("pdq_trim", B), {"dim": PDQ_BYTES * 8})],
             [("pdq_trim", "BIN_FLAT", "HAMMING")])
        make(self.local, [(("lid", I64), {"is_primary": True}), (("item", I64), {}), (("desc", B), {"dim": 256})],
             [("desc", "BIN_FLAT", "HAMMING")])
        # Milvus wants a vector in every collection: a 2-float placeholder in the two scalar-only ones
        make(self.meta, [(("key", S), {"is_primary": True, "max_length": 128}),
                         (("value", S), {"max_length": MAX_VARCHAR}), (("_v", V), {"dim": 2})],
             [("_v", "FLAT", "L2")])
        make(self.campaigns, [(("id", I64), {"is_primary": True}), (("campaign", S), {"max_length": 512}),
                              (("origin", S), {"max_length": 32}), (("_v", V), {"dim": 2})],
             [("_v", "FLAT", "L2")])
        self.create_video()

    def has_video(self) -> bool:
        return self.client.has_collection(self.frame_pdq) and self.client.has_collection(self.frames)

    def create_video(self) -> None:
        """The two video collections (a bank made before videos were stored gets them at its first video)."""
        from pymilvus import DataType

        I64 = DataType.INT64
        self._make(self.frame_pdq, [(("pk", I64), {"is_primary": True}), (("item", I64), {}),
                                    (("pdq", DataType.BINARY_VECTOR), {"dim": PDQ_BYTES * 8})],
                   [("pdq", "BIN_FLAT", "HAMMING")], auto_id=True)
        self._make(self.frames, [(("id", I64), {"is_primary": True}), (("item", I64), {}),
                                 (("data", DataType.VARCHAR), {"max_length": MAX_VARCHAR}),
                                 (("_v", DataType.FLOAT_VECTOR), {"dim": 2})],
                   [("_v", "FLAT", "L2")])

    def put_manifest(self, entries: dict) -> None:
        rows = []
        for key, value in entries.items():
            text = json.dumps(value)
            if len(text) > MAX_VARCHAR:
                raise BankError(f"manifest entry {key!r} is {len(text)} bytes; Milvus keeps at most {MAX_VARCHAR}")
            rows.append({"key": key, "value": text, "_v": [0.0, 0.0]})
        if rows:
            self.client.upsert(self.meta, rows)

    def drop(self) -> None:
        for c in (self.items, self.trim, self.local, self.meta, self.campaigns, self.frame_pdq, self.frames):
            if self.client.has_collection(c):
                self.client.drop_collection(c)


def _in(ids: Iterable[int]) -> str:
    return f"[{','.join(str(int(i)) for i in ids)}]"


def _chunks(seq: Sequence, n: int = BATCH) -> Iterator[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def _binary(v) -> bytes:
    """pymilvus returns a binary vector as bytes wrapped in a list."""
    return bytes(v[0] if isinstance(v, list) else v)


def _b64(blob: bytes | None) -> str:
    return base64.b64encode(blob).decode("ascii") if blob else ""


def _unb64(text: str | None) -> bytes | None:
    return base64.b64decode(text) if text else None


class MilvusBank:
    """A reader of a Milvus bank (the surface of bank.Bank). Rows read by id are cached for the life of
    this object: open a new one (the store's `open`) to see later writes."""

    def __init__(self, store: MilvusStore, manifest: dict) -> None:
        self.store, self.client, self.manifest = store, store.client, manifest
        self.dim = int(manifest["embedding_dim"])
        self._rows: dict[int, dict | None] = {}

    @property
    def location(self) -> str:
        return self.store.location

    @property
    def path(self) -> str:
        return self.store.location

    def __len__(self) -> int:
        return int(self.manifest["counts"]["items"])

    def _query(self, collection: str, expr: str, fields: list[str]) -> list[dict]:
        return self.client.query(collection, filter=expr, output_fields=fields, consistency_level=CONSISTENCY)

    # -- per-id look-ups ----------------------------------------------------------------------------

    def prefetch(self, ids: Iterable[int]) -> None:
        want = [int(i) for i in dict.fromkeys(ids) if int(i) not in self._rows]
        for part in _chunks(want):
            got = {r["id"]: r for r in self._query(self.store.items, f"id in {_in(part)}", _ROW_FIELDS)}
            for i in part:
                self._rows[i] = got.get(i)

    def _row(self, item_id: int) -> dict | None:
        item_id = int(item_id)
        if item_id not in self._rows:
            self.prefetch([item_id])
        return self._rows[item_id]

    def _need(self, item_id: int) -> dict:
        row = self._row(item_id)
        if row is None:
            raise NotFoundError(f"no item with id {item_id} in {self.location}; see `fakebank info`")
        return row

    def has(self, item_id: int) -> bool:
        return self._row(item_id) is not None

    def ids_of_sha256(self, shas: Sequence[str]) -> np.ndarray:
        out = np.full(len(shas), -1, np.int64)
        pos = {s: p for p, s in enumerate(shas)}
        for part in _chunks(list(pos)):
            expr = f"sha256 in {json.dumps(list(part))}"
            for r in self._query(self.store.items, expr, ["id", "sha256"]):
                out[pos[r["sha256"]]] = r["id"]
        return out

    def id_of_sha256(self, sha256: str) -> int | None:
        i = int(self.ids_of_sha256([sha256])[0])
        return i if i >= 0 else None

    def _field(self, item_id: int, name: str) -> str:
        rows = self._query(self.store.items, f"id == {int(item_id)}", [name])
        if not rows:
            raise NotFoundError(f"no item with id {item_id} in {self.location}; see `fakebank info`")
        return rows[0][name]

    def value(self, item_id: int, name: str):
        row = self._need(item_id)
        if name in ("id", "sha256", "label"):
            return row[name]
        if name == "media":
            return None if row["media"] == "image" else row["media"]
        if name == "added_at":
            return datetime.fromtimestamp(row["added_at"] / 1e6, timezone.utc)
        if name == "pdq":
            return _binary(row["pdq"])
        if name == "pdq_quality":
            return None if row["pdq_quality"] < 0 else row["pdq_quality"]
        if name in _JSON_COLUMNS or name in _VIDEO_JSON_COLUMNS:
            return row["meta"].get(name)
        if name == "pdq_trim":
            if row["media"] == HASH_ONLY:
                return None
            rows = self._query(self.store.trim, f"id == {int(item_id)}", ["pdq_trim"])
            return _binary(rows[0]["pdq_trim"]) if rows else None
        if name == "pdq_dihedral":
            text = self._field(item_id, name)
            return bytes.fromhex(text) if text else None
        if name in ("local", "thumbnail", "patch_grid"):
            return _unb64(self._field(item_id, name))
        if name in VECTOR_KINDS:
            return None if row["media"] == HASH_ONLY else self.vector(name, item_id).tolist()
        if name in _VIDEO_BLOBS:
            return self._video_blobs([int(item_id)], [name])[name][0]
        raise KeyError(name)

    @cached_property
    def _has_video(self) -> bool:
        return self.store.has_video()

    def _video_blobs(self, ids: Sequence[int], names: Sequence[str]) -> dict[str, list]:
        """`frames` and/or `frame_pdq` of `ids` (None for a non-video, as the folder reads them), gathered
        from the video collections' rows of each video in their key order."""
        videos = [i for i in ids if self._need(i)["media"] == VIDEO] if self._has_video else []
        got: dict[str, dict[int, list]] = {n: {} for n in names}
        for part in _chunks(videos):
            expr = f"item in {_in(part)}"
            if "frames" in names:
                rows = self._scan(self.store.frames, expr, ["id", "item", "data"], FRAME_PART_BATCH)
                for r in sorted(rows, key=lambda r: r["id"]):
                    got["frames"].setdefault(r["item"], []).append(base64.b64decode(r["data"]))
            if "frame_pdq" in names:
                rows = self._scan(self.store.frame_pdq, expr, ["pk", "item", "pdq"])
                for r in sorted(rows, key=lambda r: r["pk"]):  # auto keys ascend in insertion order
                    got["frame_pdq"].setdefault(r["item"], []).append(_binary(r["pdq"]))
        return {n: [b"".join(got[n][i]) if i in got[n] else None for i in ids] for n in names}

    def read_columns(self, ids: Sequence[int], names: Sequence[str]) -> dict[str, list]:
        """Columns of many items at once, in the order of `ids` (every id must be in the bank): the scalar
        fields from the row cache, the vectors, blobs and de-bordered hashes in one query per BATCH ids."""
        ids = [int(i) for i in ids]
        self.prefetch(ids)
        for i in ids:
            self._need(i)
        out = {n: [self.value(i, n) for i in ids] for n in names if n not in _HEAVY and n not in _VIDEO_BLOBS}
        if any(n in _VIDEO_BLOBS for n in names):
            out.update(self._video_blobs(ids, [n for n in names if n in _VIDEO_BLOBS]))
        heavy = [n for n in names if n in _HEAVY and n != "pdq_trim"]
        if heavy:
            got: dict[int, dict] = {}
            for part in _chunks(ids):
                got.update((r["id"], r) for r in self._query(self.store.items, f"id in {_in(part)}", ["id", *heavy]))
            for n in heavy:
                decode = {"local": _unb64, "thumbnail": _unb64, "patch_grid": _unb64,
                          "pdq_dihedral": lambda t: bytes.fromhex(t) if t else None}.get(n, lambda v: list(map(float, v)))
                out[n] = [None if self.is_hash_only(i) and n in VECTOR_KINDS else decode(got[i][n]) for i in ids]
        if "pdq_trim" in names:
            trims: dict[int, bytes] = {}
            for part in _chunks(ids):
                trims.update((r["id"], _binary(r["pdq_trim"]))
                             for r in self._query(self.store.trim, f"id in {_in(part)}", ["id", "pdq_trim"]))
            out["pdq_trim"] = [trims.get(i) for i in ids]
        return out

    def is_hash_only(self, item_id: int) -> bool:
        return self._need(item_id)["media"] == HASH_ONLY

    def label_of(self, item_id: int) -> str:
        return self._need(item_id)["label"]

    def item(self, item_id: int) -> dict:
        rec = {c: self.value(item_id, c) for c in META_COLUMNS}
        rec["added_at"] = rec["added_at"].isoformat()
        rec["pdq"] = rec["pdq"].hex()
        return rec

    def thumbnail(self, item_id: int) -> bytes | None:
        return self.value(item_id, "thumbnail")

    def missing_thumbnails(self) -> list[int]:
        return sorted(r["id"] for r in self._scan(self.store.items, f'thumbnail == "" and media != "{HASH_ONLY}"', ["id"]))

    def vector(self, kind: str, item_id: int) -> np.ndarray:
        return np.asarray(self._field(item_id, kind), np.float32)

    def pdq_of(self, item_id: int) -> tuple[bytes, int]:
        row = self._need(item_id)
        q = row["pdq_quality"]
        return _binary(row["pdq"]), SHARED_HASH_QUALITY if q < 0 else int(q)

    def local_is_reduced(self, item_id: int) -> bool:
        return False  # every stored descriptor is indexed

    # -- searches -----------------------------------------------------------------------------------

    def search(self, kind: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(inner products [Q, k], ids [Q, k]) over `cls` (FLAT: exact); missing neighbours have id -1."""
        if kind != "cls":
            raise ValueError("only `cls` is searched by vector; campaigns read `patch` whole")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(k, MAX_LIMIT))
        sims, ids = np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        if not len(queries):
            return sims, ids
        res = self.client.search(self.store.items, data=queries.tolist(), anns_field="cls", limit=k,
                                 filter=f'media != "{HASH_ONLY}"', search_params={"metric_type": "IP"},
                                 consistency_level=CONSISTENCY)
        for q, hits in enumerate(res):
            for j, h in enumerate(hits):
                sims[q, j], ids[q, j] = h["distance"], h["id"]
        return sims, ids

    def _range(self, collection: str, field: str, codes: np.ndarray, max_distance: int,
               key: str | None = None) -> list[list[tuple[int, int]]]:
        """Per query code, every (primary key, or the hit row's field `key`; Hamming distance ≤ max_distance):
        a range search (`radius` exclusive, `range_filter` inclusive)."""
        out: list[list[tuple[int, int]]] = []
        for part in _chunks(codes):
            res = self.client.search(collection, data=[bytes(c) for c in np.asarray(part, np.uint8)], anns_field=field,
                                     limit=MAX_LIMIT, consistency_level=CONSISTENCY,
                                     output_fields=[key] if key else None,
                                     search_params={"metric_type": "HAMMING",
                                                    "params": {"radius": max_distance + 1, "range_filter": 0}})
            out.extend([(int(h["entity"][key] if key else h["id"]), int(h["distance"])) for h in hits] for hits in res)
        return out

    def binary_within(self, kind: str, codes: np.ndarray, max_distance: int) -> list[list[tuple[int, int]]]:
        if not len(codes):
            return []
        if kind == "pdq":
            return self._range(self.store.items, "pdq", codes, max_distance)
        if kind == "pdq_trim":
            # rows of an `add` killed before its items were written have no item: never report them
            hits = self._range(self.store.trim, "pdq_trim", codes, max_distance)
            self.prefetch(i for q in hits for i, _ in q)
            return [[(i, d) for i, d in q if self._rows[i] is not None] for q in hits]
        raise ValueError(kind)

    def pdq_within(self, query_codes: np.ndarray, max_distance: int) -> list[list[tuple[int, int]]]:
        return self.binary_within("pdq", query_codes, max_distance)

    def frame_pdq_within(self, codes: np.ndarray, max_distance: int) -> list[dict[int, int]]:
        """Per query code, {video item id: smallest distance ≤ max_distance to any of its indexed frame
        hashes} (exact: BIN_FLAT), as bank.Bank's."""
        out: list[dict[int, int]] = [{} for _ in range(len(codes))]
        if not len(codes) or not self._has_video:
            return out
        hits = self._range(self.store.frame_pdq, "pdq", codes, max_distance, key="item")
        self.prefetch(i for q in hits for i, _ in q)
        for best, q in zip(out, hits):
            for i, d in q:
                # rows of an `add` killed before its item was written, or of a removal cut short: no item
                if self._rows[i] is not None and d < best.get(i, 1 << 30):
                    best[i] = d
        return out

    def local_quantizer(self):
        return None

    def local_knn(self, desc: np.ndarray, k: int,
                  reduced_queries: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(Hamming distances [Q, k], local ids item_id << LOCAL_ID_BITS | rank) of the k nearest stored
        descriptors (exact: BIN_FLAT); missing ones have id -1."""
        dist, ids = np.full((len(desc), k), 1 << 30, np.int32), np.full((len(desc), k), -1, np.int64)
        if not len(desc) or not self.has_local():
            return dist, ids
        start = 0
        for part in _chunks(np.asarray(desc, np.uint8)):
            res = self.client.search(self.store.local, data=[bytes(d) for d in part], anns_field="desc", limit=k,
                                     search_params={"metric_type": "HAMMING"}, consistency_level=CONSISTENCY)
            for q, hits in enumerate(res):
                for j, h in enumerate(hits):
                    dist[start + q, j], ids[start + q, j] = int(h["distance"]), int(h["id"])
            start += len(part)
        items = np.where(ids >= 0, ids >> LOCAL_ID_BITS, -1)
        self.prefetch(int(i) for i in np.unique(items[items >= 0]))
        orphan = np.array([i >= 0 and self._rows[int(i)] is None for i in items.ravel()], bool).reshape(ids.shape)
        ids[orphan] = -1  # descriptors of an `add` killed before its items were written
        return dist, ids

    @cached_property
    def _local_rows(self) -> int:
        return self.store.count(self.store.local)

    def has_local(self) -> bool:
        return self._local_rows > 0

    def campaign_of(self, item_id: int) -> str | None:
        """As `bank.Bank.campaign_of`: the analyst's campaign, else the computed one."""
        return self.value(item_id, "campaign") or computed_campaign(self, item_id)

    def campaign_assignments(self) -> pa.Table | None:
        rows = self._scan(self.store.campaigns, "", ["id", "campaign", "origin"])
        if not rows and not self.manifest.get("campaigns"):
            return None
        rows.sort(key=lambda r: r["id"])
        return pa.table({c: [r[c] for r in rows] for c in ("id", "campaign", "origin")}, schema=CAMPAIGNS_SCHEMA)

    # -- whole-bank reads ----------------------------------------------------------------------------

    def _scan(self, collection: str, expr: str, fields: list[str], batch_size: int = BATCH) -> list[dict]:
        it = self.client.query_iterator(collection, batch_size=batch_size, filter=expr, output_fields=fields,
                                        consistency_level=CONSISTENCY)
        out: list[dict] = []
        try:
            while batch := it.next():
                out.extend(batch)
        finally:
            it.close()
        return out

    def batches(self, names: Sequence[str]) -> Iterator[pa.Table]:
        """The live items' columns `names` (items_schema types), id-ordered, BATCH ids at a time."""
        for part in _chunks(self.ids.tolist()):
            yield self._table_of(part, names)

    def _table_of(self, ids: Sequence[int], names: Sequence[str]) -> pa.Table:
        schema = items_schema(self.dim)
        cols = self.read_columns(ids, names)
        return pa.table({n: pa.array(cols[n], schema.field(n).type) for n in names},
                        schema=pa.schema([schema.field(n) for n in names]))

    def recent_ids(self, n: int) -> list[int]:
        return self.ids[::-1][:n].tolist()

    @cached_property
    def _all(self) -> list[dict]:
        rows = self._scan(self.store.items, "", _ROW_FIELDS)
        rows.sort(key=lambda r: r["id"])
        for r in rows:
            self._rows.setdefault(r["id"], r)
        return rows

    @cached_property
    def ids(self) -> np.ndarray:
        return np.array([r["id"] for r in self._all], np.int64)

    def row(self, item_id: int) -> int:
        r = int(np.searchsorted(self.ids, int(item_id)))
        if r >= len(self.ids) or self.ids[r] != int(item_id):
            raise NotFoundError(f"no item with id {item_id} in {self.location}; see `fakebank info`")
        return r

    @cached_property
    def table(self) -> pa.Table:
        """Every live item's metadata columns (as bank.Bank.table)."""
        return self._table_of(self.ids.tolist(), table_columns(self.dim))

    @cached_property
    def vectors(self) -> dict[str, np.ndarray]:
        rows = self._scan(self.store.items, "", ["id", *VECTOR_KINDS])
        rows.sort(key=lambda r: r["id"])
        return {k: np.asarray([r[k] for r in rows], np.float32).reshape(len(rows), self.dim) for k in VECTOR_KINDS}

    @cached_property
    def pdq_codes(self) -> np.ndarray:
        codes = [np.frombuffer(_binary(r["pdq"]), np.uint8) for r in self._all]
        return np.stack(codes) if codes else np.zeros((0, PDQ_BYTES), np.uint8)

    @cached_property
    def pdq_quality(self) -> np.ndarray:
        return np.array([SHARED_HASH_QUALITY if r["pdq_quality"] < 0 else r["pdq_quality"] for r in self._all], np.int16)

    @cached_property
    def labels(self) -> np.ndarray:
        return np.asarray([r["label"] for r in self._all], dtype=object)


class MilvusWriter:
    """The writer of a Milvus bank (the surface of bank.BankWriter). Each operation's writes are durable
    when it returns; `bank` is re-read after each, so that callers see their own writes."""

    def __init__(self, store: MilvusStore, *, model_info: dict | None = None, embedding_dim: int | None = None,
                 create: bool = True) -> None:
        self.store, self.model_info, self.embedding_dim, self.create = store, model_info, embedding_dim, create
        self.bank: MilvusBank | None = None

    def __enter__(self) -> MilvusWriter:
        if not self.store.exists():
            if not self.create:
                self.store.read_manifest()  # raises the right message
            if self.model_info is None or self.embedding_dim is None:
                raise BankError(f"no bank at {self.store.location}; add images to create one")
            self.store.create(int(self.embedding_dim))
            now = datetime.now(timezone.utc).isoformat()
            self.store.put_manifest({"created_at": now, "updated_at": now, "model": self.model_info,
                                     "embedding_dim": int(self.embedding_dim), "embedding_kinds": list(VECTOR_KINDS),
                                     "generation": 0, "next_id": 1, "fusion": None})
            self.store.put_manifest({"format_version": MILVUS_FORMAT})  # last: the bank exists once complete
        self.bank = self.store.open()
        if self.model_info is not None:
            check_model(self.bank.manifest, self.model_info, self.store.location)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        pass

    def _committed(self, **entries) -> None:
        assert self.bank is not None
        entries = {"generation": self.bank.manifest["generation"] + 1,
                   "updated_at": datetime.now(timezone.utc).isoformat(), **entries}
        self.store.put_manifest(entries)
        self.bank = self.store.open()

    # -- operations ---------------------------------------------------------------------------------

    def add(self, items: Sequence[NewItem]) -> list[int]:
        return self.apply(items)

    def apply(self, items: Sequence[NewItem], changes: Sequence[tuple[int, str, str | None]] = (),
              settings: dict | None = None) -> list[int]:
        """Add `items`, apply `changes` (label, remove, EDIT_OPS) and store manifest `settings`; each part
        durable when written (Milvus has no transaction across them)."""
        assert self.bank is not None
        if not items and not changes and not settings:
            return []
        dim = self.bank.dim
        for it in items:
            check_new_item(it, dim, self.store.location)
            if it.frames and len(it.frames) > FRAME_PART_BYTES << FRAME_PART_BITS:
                raise BankError(f"{it.path}: {len(it.frames)} bytes of sampled frames; the Milvus store keeps at "
                                f"most {FRAME_PART_BYTES << FRAME_PART_BITS} a video (lower --max-frames)")
        for i, op, v in changes:
            if op == "label":
                check_label(v)
            elif op not in ("remove", "campaign", *EDIT_OPS):
                raise BankError(f"unknown change {op!r}")
            self.bank._need(i)
        for key in settings or {}:
            if key in BOOKKEEPING:
                raise BankError(f"{key!r} is bank bookkeeping, not a setting")
        if any(it.frames or it.frame_pdq for it in items) and not self.bank._has_video:
            self.store.create_video()  # a bank made before videos were stored: its first video
        ids: list[int] = []
        if items:
            first = int(self.bank.manifest["next_id"])
            ids = list(range(first, first + len(items)))
            self.store.put_manifest({"next_id": first + len(items)})  # reserved before any row is written
            self._insert(items, ids)
        edits = [c for c in changes if c[1] != "campaign"]
        if edits:
            self._change(edits)
        self._set_campaign_rows({int(i): v for i, op, v in changes if op == "campaign"})
        self._committed(**(settings or {}))
        return ids

    def _insert(self, items: Sequence[NewItem], ids: list[int]) -> None:
        from fakebank.signals import LocalFeatures

        now = int(datetime.now(timezone.utc).timestamp() * 1e6)
        zeros = [0.0] * self.bank.dim
        rows, trims, locals_, frame_codes, frame_parts = [], [], [], [], []
        for item_id, it in zip(ids, items):
            meta = {c: getattr(it, c) for c in _JSON_COLUMNS}
            for c in ("p_fake", "logit"):  # float32, as the folder's columns hold them: both stores answer alike
                meta[c] = None if meta[c] is None else float(np.float32(meta[c]))
            for c in _VIDEO_JSON_COLUMNS:  # videos only: image rows keep the JSON they always had
                if getattr(it, c) is not None:
                    meta[c] = float(np.float32(getattr(it, c)))
            thumb = _b64(it.thumbnail)
            rows.append({
                "id": item_id, "sha256": it.sha256, "label": it.label, "media": it.media or "image",
                "added_at": now, "pdq": bytes(it.pdq),
                "pdq_quality": -1 if it.pdq_quality is None else int(it.pdq_quality),
                "cls": zeros if it.cls is None else np.asarray(it.cls, np.float32).tolist(),
                "patch": zeros if it.patch is None else np.asarray(it.patch, np.float32).tolist(),
                "meta": meta, "pdq_dihedral": it.pdq_dihedral.hex() if it.pdq_dihedral else "",
                "local": _b64(it.local),
                "thumbnail": thumb if len(thumb) <= MAX_VARCHAR else "",  # too large: made from the file on demand
                "patch_grid": _b64(it.patch_grid),
            })
            if it.pdq_trim:
                trims.append({"id": item_id, "pdq_trim": bytes(it.pdq_trim)})
            if it.local:
                for rank, d in enumerate(LocalFeatures.from_bytes(it.local).desc[:LOCAL_MAX]):
                    locals_.append({"lid": item_id << LOCAL_ID_BITS | rank, "item": item_id, "desc": d.tobytes()})
            for k in range(0, len(it.frame_pdq or b""), PDQ_BYTES):
                frame_codes.append({"item": item_id, "pdq": it.frame_pdq[k:k + PDQ_BYTES]})
            for n, k in enumerate(range(0, len(it.frames or b""), FRAME_PART_BYTES)):
                frame_parts.append({"id": item_id << FRAME_PART_BITS | n, "item": item_id,
                                    "data": _b64(it.frames[k:k + FRAME_PART_BYTES]), "_v": [0.0, 0.0]})
        # signals first, the item rows last: a sha256 that reads as present has all its signals
        for coll, data, n in ((self.store.trim, trims, BATCH), (self.store.local, locals_, BATCH),
                              (self.store.frame_pdq, frame_codes, BATCH),
                              (self.store.frames, frame_parts, FRAME_PART_BATCH), (self.store.items, rows, BATCH)):
            for part in _chunks(data, n):
                self.store.client.insert(coll, list(part))

    def _full_rows(self, ids: Sequence[int]) -> list[dict]:
        fields = ["id", "sha256", "label", "media", "added_at", "pdq", "pdq_quality", "cls", "patch", "meta",
                  "pdq_dihedral", "local", "thumbnail", "patch_grid"]
        out = []
        for part in _chunks(list(ids)):
            out.extend(self.bank._query(self.store.items, f"id in {_in(part)}", fields))
        for r in out:
            r["pdq"] = _binary(r["pdq"])
            r["cls"], r["patch"] = list(r["cls"]), list(r["patch"])
        return out

    def _change(self, changes: Sequence[tuple[int, str, str | None]]) -> None:
        """Later changes win; a removal deletes the item's rows in every collection."""
        final: dict[int, dict] = {}
        removed: list[int] = []
        for i, op, v in changes:
            if op == "remove":
                removed.append(int(i))
                final.pop(int(i), None)
            else:
                final.setdefault(int(i), {})[op] = v
        if final:
            rows = self._full_rows(list(final))
            for r in rows:
                for op, v in final[r["id"]].items():
                    if op == "label":
                        r["label"] = v
                    else:
                        r["meta"] = {**r["meta"], EDIT_COLUMN[op]: v}
            for part in _chunks(rows):
                self.store.client.upsert(self.store.items, list(part))
        has_video = bool(removed) and self.store.has_video()
        for part in _chunks(removed):
            expr = f"id in {_in(part)}"
            self.store.client.delete(self.store.items, filter=expr)  # the item first: then it is gone
            self.store.client.delete(self.store.trim, filter=expr)
            self.store.client.delete(self.store.local, filter=f"item in {_in(part)}")
            self.store.client.delete(self.store.campaigns, filter=expr)
            if has_video:
                self.store.client.delete(self.store.frame_pdq, filter=f"item in {_in(part)}")
                self.store.client.delete(self.store.frames, filter=f"item in {_in(part)}")

    def set_label(self, ids: Iterable[int], label: str) -> None:
        check_label(label)
        self.apply((), [(int(i), "label", label) for i in dict.fromkeys(ids)])

    def remove(self, ids: Iterable[int]) -> None:
        self.apply((), [(int(i), "remove", None) for i in dict.fromkeys(ids)])

    def set_campaigns(self, assignments: dict[int, str | None]) -> None:
        assert self.bank is not None
        for i in assignments:
            self.bank._need(i)
        self._set_campaign_rows(assignments)
        self._committed()

    def _set_campaign_rows(self, assignments: dict[int, str | None]) -> None:
        clear = [int(i) for i, c in assignments.items() if c is None]
        rows = [{"id": int(i), "campaign": c, "origin": "computed", "_v": [0.0, 0.0]}
                for i, c in assignments.items() if c is not None]
        if clear:
            self.store.client.delete(self.store.campaigns, filter=f"id in {_in(clear)}")
        for part in _chunks(rows):
            self.store.client.upsert(self.store.campaigns, list(part))

    def commit_campaigns(self, assignments: pa.Table, info: dict, clustered=None) -> None:
        """Replace the stored assignments with a campaign run's (CAMPAIGNS_SCHEMA) and store its `info`.
        Edits are rows here, not deltas: one made while the run clustered is replaced by the run's row."""
        rows = [{"id": int(i), "campaign": c, "origin": o, "_v": [0.0, 0.0]} for i, c, o in zip(
            *(assignments.column(n).to_pylist() for n in ("id", "campaign", "origin")))]
        self.store.client.delete(self.store.campaigns, filter="id >= -9223372036854775807")
        for part in _chunks(rows):
            self.store.client.insert(self.store.campaigns, list(part))
        self._committed(campaigns={**info, "assigned": len(rows)})

    def add_thumbnails(self, thumbs: dict[int, bytes]) -> None:
        if not thumbs:
            return
        rows = self._full_rows(list(thumbs))
        for r in rows:
            r["thumbnail"] = _b64(thumbs[r["id"]])
        for part in _chunks(rows):
            self.store.client.upsert(self.store.items, list(part))
        self._committed()

    def set_manifest_entry(self, key: str, value: dict) -> None:
        if key in BOOKKEEPING:
            raise BankError(f"{key!r} is bank bookkeeping, not a setting")
        self._committed(**{key: value})

    def set_fusion(self, fusion: dict) -> None:
        self.set_manifest_entry("fusion", fusion)

    def compact(self, progress=None) -> dict:
        """Ask a Milvus server to compact the collections (it merges segments and purges deletions on its
        own too); Milvus Lite has no compaction."""
        server = self.store.shared_readers
        if server:
            for c in (self.store.items, self.store.trim, self.store.local, self.store.campaigns,
                      self.store.frame_pdq, self.store.frames):
                if self.store.client.has_collection(c):
                    self.store.client.compact(c)
        self._committed()
        return {"segments_before": None, "segments_after": None, "delta_files_before": None,
                "delta_files_after": None, "items": len(self.bank),
                "compaction": "requested from the Milvus server" if server else "Milvus Lite does not compact"}
