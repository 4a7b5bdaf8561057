"""Hash lists shared between platforms (issue 12): read and write the exchanges' formats, and turn a list
into one commit of hash-only items (DESIGN §1.4: items with a PDQ hash and metadata but no pixels).

Sits beside the bank (bank → **hashlists** → api); knows nothing of the model. Formats:

- ``local_file``: python-threatexchange's file exchange, one signal a line, ``<signal_type> <signal>``,
  or the bare signal when the signal type is given (``--signal-type pdq``);
- ``csv``: ``threatexchange dataset --csv``'s columns ``signal_type,signal_str,collab,category,tags``
  (tags space-separated; the category is pytx's ``SignalOpinionCategory`` name);
- ``fakebank``: the bank's own full export, Parquet with every column (embeddings included) and the model
  identity in the file's metadata; imported into a bank of the same identity with full matching, into any
  other bank as hash-only items.

Labels and pytx's opinion categories map one to one: ``fake`` ↔ ``POSITIVE_CLASS``, ``real`` ↔
``NEGATIVE_CLASS``, ``unknown`` ↔ ``INVESTIGATION_SEED``. A signal is one item per (signal type, hash,
source): importing the same list again updates labels, tags and notes in place (`bank.signal_key`).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fakebank.bank import (
    HASH_ONLY,
    LABELS,
    PDQ_BYTES,
    SHARED_HASH_QUALITY,
    Bank,
    NewItem,
    check_label,
    items_schema,
    signal_key,
)
from fakebank.errors import InputError, UsageError
from fakebank.outputs import check_output_file
from fakebank.video import looks_like_vpdq

FORMATS = ("local_file", "csv", "fakebank")
SIGNAL_TYPE = "pdq"  # the one hash fakebank matches; others are reported per line, not imported
CSV_COLUMNS = ("signal_type", "signal_str", "collab", "category", "tags")
DEFAULT_COLLAB = "fakebank"  # the csv collab of an item with no source
CATEGORY_OF_LABEL = {"fake": "POSITIVE_CLASS", "real": "NEGATIVE_CLASS", "unknown": "INVESTIGATION_SEED"}
LABEL_OF_CATEGORY = {v: k for k, v in CATEGORY_OF_LABEL.items()}
PARQUET_META_KEY = b"fakebank"
MAX_REPORTED_ERRORS = 100  # per import; the count of the rest is still given
_PDQ_HEX = re.compile(r"^[0-9a-f]{64}$")
_SNIFF_BYTES = 1 << 16


@dataclass(frozen=True)
class Signal:
    """One shared hash and what its list says about it."""

    hash: str  # 64 lowercase hex digits
    label: str = "fake"
    source: str | None = None
    tags: tuple[str, ...] = ()
    note: str | None = None
    external_id: str | None = None
    quality: int | None = None


@dataclass
class HashList:
    """A parsed list: its signals (in file order), the lines that could not be used, and, for fakebank's
    own export, the full rows and the model identity they were embedded with."""

    path: str
    format: str
    signals: list[Signal] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line number, what is wrong)
    error_count: int = 0
    rows: pa.Table | None = None
    model_identity: str | None = None

    def error(self, line: int, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append((line, message))


# -- reading ------------------------------------------------------------------------------------------------

def detect_format(head: bytes) -> str:
    """From a file's first bytes: `fakebank` for Parquet, `csv` when the first line is the pytx CSV
    header, else `local_file`."""
    if head.startswith(b"PAR1"):
        return "fakebank"
    first = head.split(b"\n", 1)[0].decode("utf-8", "replace").strip().lstrip("\ufeff")
    return "csv" if "signal_type" in [c.strip() for c in first.split(",")] else "local_file"


def read_list(path: str | Path, fmt: str | None = None, *, signal_type: str | None = None,
              label: str = "fake", source: str | None = None) -> HashList:
    """Parse a hash list; every bad line is reported with its number, the good ones are kept.

    `label`/`source`: for formats that carry none (local_file; csv rows with an empty collab)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a folder; import takes one hash list file (a folder of vPDQ files from "
                         "`export --format vpdq` is for partners' video matchers: import the videos with `add`)")
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    check_label(label)
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    fmt = fmt or detect_format(head)
    if fmt == "fakebank":
        return _read_parquet(path, source)
    if not head:
        raise InputError(f"{path}: empty file, no signals to import")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError(f"{path}: UTF-16 text; save the list as UTF-8 (e.g. `iconv -f UTF-16 -t UTF-8`)")
    if b"\0" in head:
        raise InputError(f"{path}: binary data, not a {fmt} hash list (formats: {', '.join(FORMATS)})")
    out = HashList(str(path), fmt)
    with open(path, encoding="utf-8-sig", errors="strict", newline="") as f:  # -sig: a leading BOM is no text
        try:
            if fmt == "local_file":
                _read_lines(f, out, signal_type, label, source)
            else:
                _read_csv(f, out, label, source)
        except UnicodeDecodeError as e:
            raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); is it a hash list?") from None
        except csv.Error as e:  # a field over the csv module's bound (128 KiB) or a broken quote
            raise InputError(f"{path}: not readable as CSV ({e}); is it a hash list?") from None
    if not out.signals and out.error_count and looks_like_vpdq(head.decode("utf-8", "replace")):
        raise InputError(f"{path}: a vPDQ file (one video's frame hashes), not a hash list; add the video itself "
                         "with `add`, or match it with `query` or the HMA API's signal_type=vpdq")
    if not out.signals and not out.error_count:
        raise InputError(f"{path}: no signals in the file")
    return out


def check_signal(out: HashList, n: int, stype: str, signal: str) -> str | None:
    """The signal of line `n` normalised (lower-case hex), or None with the line's error noted in `out`."""
    if stype != SIGNAL_TYPE:
        out.error(n, f"signal type {stype!r} is not supported (fakebank matches {SIGNAL_TYPE})")
        return None
    signal = signal.strip().lower()
    if not _PDQ_HEX.match(signal):
        out.error(n, f"malformed PDQ hash {signal[:80]!r}: expected 64 hex digits")
        return None
    return signal


def _read_lines(f: io.TextIOBase, out: HashList, signal_type: str | None, label: str, source: str | None) -> None:
    for n, raw in enumerate(f, 1):
        line = raw.strip()
        if not line:
            continue
        if signal_type is not None:
            stype, signal = signal_type, line
        else:
            stype, _, signal = line.partition(" ")
            if not signal:
                out.error(n, "no signal type before the hash; write '<signal_type> <hash>' or pass "
                             "--signal-type pdq for a file of bare hashes")
                continue
        h = check_signal(out, n, stype, signal)
        if h is not None:
            out.signals.append(Signal(h, label=label, source=source))


def _read_csv(f: io.TextIOBase, out: HashList, label: str, source: str | None) -> None:
    reader = csv.DictReader(f)
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise InputError(f"{out.path}: CSV without the column(s) {', '.join(missing)}; threatexchange's "
                         f"`dataset --csv` writes {','.join(CSV_COLUMNS)}")
    for row in reader:
        n = reader.line_num
        if None in row or any(row[c] is None for c in CSV_COLUMNS):
            out.error(n, f"expected {len(CSV_COLUMNS)} columns")
            continue
        h = check_signal(out, n, row["signal_type"].strip(), row["signal_str"])
        if h is None:
            continue
        category = row["category"].strip()
        if category and category not in LABEL_OF_CATEGORY:
            out.error(n, f"unknown category {category!r} (one of {', '.join(LABEL_OF_CATEGORY)})")
            continue
        out.signals.append(Signal(h, label=LABEL_OF_CATEGORY.get(category, label),
                                  source=row["collab"].strip() or source, tags=tuple(row["tags"].split())))


def _read_parquet(path: Path, source: str | None) -> HashList:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: unreadable Parquet ({e})") from None
    meta = (pf.schema_arrow.metadata or {}).get(PARQUET_META_KEY)
    if meta is None:
        raise InputError(f"{path}: a Parquet file without fakebank's metadata; only `fakebank export "
                         "--format fakebank` files can be imported as Parquet")
    try:
        info = json.loads(meta)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: its fakebank metadata is not valid JSON ({e}); export the list again") from None
    table = pf.read()
    wanted = ("pdq", "label", "source", "tags", "note", "pdq_quality", "external_id", "id")
    missing = [c for c in (*wanted, "sha256") if c not in table.column_names]
    if missing:
        raise InputError(f"{path}: a fakebank list without the column(s) {', '.join(missing)}; export it again with "
                         "`fakebank export --format fakebank`")
    out = HashList(str(path), "fakebank", model_identity=(info.get("model") or {}).get("identity_hash"))
    cols = {c: table.column(c).to_pylist() for c in wanted}
    good = np.zeros(len(table), bool)
    for n in range(len(table)):
        h, label = cols["pdq"][n], cols["label"][n]
        if h is None or len(h) != PDQ_BYTES:
            out.error(n + 1, "row without a PDQ hash")
            continue
        if label not in LABELS:
            out.error(n + 1, f"label must be one of {', '.join(LABELS)}, not {str(label)[:40]!r}")
            continue
        good[n] = True
        out.signals.append(Signal(
            h.hex(), label=label, source=cols["source"][n] or source,
            tags=tuple((cols["tags"][n] or "").split()), note=cols["note"][n],
            external_id=cols["external_id"][n] or f"fakebank:{info.get('bank_id', '')}:{cols['id'][n]}",
            quality=cols["pdq_quality"][n]))
    out.rows = table.filter(pa.array(good))  # row k is signal k: a skipped row must not shift the rest
    return out


# -- planning an import ---------------------------------------------------------------------------------------

@dataclass
class ImportPlan:
    """What one import does to a bank: new items, and changes (label, tags, note) to known ones."""

    items: list[NewItem]
    changes: list[tuple[int, str, str | None]]
    unchanged: int
    duplicates: int  # signals repeated within the list (the last one counts)
    hash_only: bool  # a fakebank export of another model identity lands as hashes only

    @property
    def updated(self) -> int:
        return len({i for i, _, _ in self.changes})


def plan_import(bank: Bank, hl: HashList, *, model_identity: str | None) -> ImportPlan:
    """Match the list's signals to the bank's items by signal identity (type, hash, source)."""
    full = hl.rows is not None and hl.model_identity is not None and hl.model_identity == model_identity
    latest: dict[str, int] = {}
    for n, s in enumerate(hl.signals):
        latest[_key_of(s, hl, n, full)] = n
    duplicates = len(hl.signals) - len(latest)
    keys = list(latest)
    known = bank.ids_of_sha256(keys)
    current = _current_values(bank, known)
    items, changes, unchanged = [], [], 0
    for p, (key, item_id) in enumerate(zip(keys, known.tolist())):
        n = latest[key]
        s = hl.signals[n]
        if item_id < 0:
            items.append(_full_item(hl.rows, n, s) if full else _hash_item(key, s))
            continue
        label, tags_now, note_now = current[p]
        before = len(changes)
        if label != s.label:
            changes.append((item_id, "label", s.label))
        tags = " ".join(s.tags) or None
        if tags_now != tags:
            changes.append((item_id, "tags", tags))
        if s.note is not None and note_now != s.note:
            changes.append((item_id, "note", s.note))
        unchanged += len(changes) == before
    return ImportPlan(items, changes, unchanged, duplicates, hash_only=hl.rows is not None and not full)


def _current_values(bank: Bank, ids: np.ndarray) -> dict[int, tuple]:
    """position → (label, tags, note) of the known items (id ≥ 0) as the bank reads them now, in one bulk read."""
    pos = np.flatnonzero(ids >= 0).tolist()
    cols = bank.read_columns(ids[pos].tolist(), ("label", "tags", "note"))
    return {p: v for p, v in zip(pos, zip(cols["label"], cols["tags"], cols["note"]))}


def _key_of(s: Signal, hl: HashList, n: int, full: bool) -> str:
    if full:  # an image item keeps its file's sha256: adding the same image later is then a no-op
        return hl.rows.column("sha256")[n].as_py()
    return signal_key(SIGNAL_TYPE, s.hash, s.source)


def _hash_item(key: str, s: Signal, campaign: str | None = None) -> NewItem:
    return NewItem(sha256=key, path=None, label=check_label(s.label), p_fake=None, logit=None,
                   pdq=bytes.fromhex(s.hash), pdq_quality=s.quality, cls=None, patch=None, width=None,
                   height=None, source=s.source, note=s.note, media=HASH_ONLY, tags=" ".join(s.tags) or None,
                   external_id=s.external_id, campaign=campaign)


def _full_item(rows: pa.Table, n: int, s: Signal) -> NewItem:
    """An exported row with everything the partner's bank held for it: embeddings, signals, thumbnail, a
    video's frames and the patch grid (a column left out here would silently cost the item a signal)."""
    r = rows.slice(n, 1).to_pylist()[0]
    if r.get("media") == HASH_ONLY or r.get("cls") is None:
        return _hash_item(r["sha256"], s, r.get("campaign"))
    stored = {f.name: r.get(f.name) for f in fields(NewItem)}
    return NewItem(**{**stored, "label": check_label(s.label), "source": s.source, "external_id": s.external_id,
                      "cls": np.asarray(r["cls"], np.float32), "patch": np.asarray(r["patch"], np.float32)})


# -- writing ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExportFilter:
    labels: tuple[str, ...] = ("fake",)
    source: str | None = None
    campaign: str | None = None
    min_quality: int = 50  # a hash below PDQ's quality bar matches noise at a partner

    # the columns `keep` reads
    COLUMNS = ("id", "label", "pdq_quality", "source", "campaign")

    def keep(self, t: pa.Table, computed: set[int]) -> tuple[np.ndarray, np.ndarray]:
        """Which rows of a batch of live items (labels as the bank reads them now) pass the filter, and
        which pass all of it but the quality bar; `computed`: the ids clustering put in the wanted campaign."""
        keep = np.isin(np.asarray(t.column("label").to_pylist(), dtype=object), list(self.labels))
        if self.source is not None:
            keep &= np.asarray(t.column("source").to_pylist(), dtype=object) == self.source
        if self.campaign is not None:
            analyst = np.asarray(t.column("campaign").to_pylist(), dtype=object) == self.campaign
            keep &= analyst | np.isin(t.column("id").to_numpy(zero_copy_only=False),
                                      np.fromiter(computed, np.int64, len(computed)))
        good = t.column("pdq_quality").fill_null(SHARED_HASH_QUALITY).to_numpy(zero_copy_only=False) >= self.min_quality
        return keep & good, keep & ~good

    def computed_ids(self, bank: Bank) -> set[int]:
        """The ids clustering put in the wanted campaign; a campaign that neither clustering nor an analyst
        gave any item is a usage error (a typo would otherwise send a partner an empty list)."""
        if self.campaign is None:
            return set()
        stored = bank.campaign_assignments()
        ids = set() if stored is None else \
            set(stored.filter(pc.equal(stored.column("campaign"), self.campaign)).column("id").to_pylist())
        if ids:
            return ids
        analyst: set[str | None] = set()
        for t in bank.batches(["campaign"]):
            analyst |= set(pc.unique(t.column("campaign")).to_pylist())
            if self.campaign in analyst:
                return ids
        computed = set(stored.column("campaign").to_pylist()) if stored is not None else set()
        raise _unknown("is in campaign", "campaigns", self.campaign, analyst | computed,
                       "run `fakebank campaigns` to compute campaigns")


def export_batches(bank: Bank, flt: ExportFilter, names: Sequence[str],
                   left_out: dict[str, int] | None = None) -> Iterator[pa.Table]:
    """The live items that pass `flt`, columns `names` (besides the filter's own), a batch at a time;
    `left_out["min_quality"]` counts the items only the quality bar kept out. A source no item has is a
    usage error once the pass ends, as a campaign is (a typo would send a partner an empty list)."""
    computed = flt.computed_ids(bank)
    cols = list(dict.fromkeys([*ExportFilter.COLUMNS, *names]))
    sources: set[str | None] = set()
    for t in bank.batches(cols):
        if flt.source is not None and flt.source not in sources:
            sources |= set(pc.unique(t.column("source")).to_pylist())
        keep, low = flt.keep(t, computed)
        if left_out is not None:
            left_out["min_quality"] = left_out.get("min_quality", 0) + int(low.sum())
        t = t.filter(pa.array(keep))
        if len(t):
            yield t.select(list(names))
    if flt.source is not None and flt.source not in sources:
        raise _unknown("has source", "sources", flt.source, sources, "no item has a source (give one with `add --source`)")


def _unknown(what: str, kind: str, wanted: str, there: set, otherwise: str) -> UsageError:
    """A filter value no item has (a typo would send a partner an empty list), with the values there are."""
    names = sorted(n for n in there if n)
    return UsageError(f"no item {what} {wanted!r}; "
                      + (f"{kind}: {', '.join(names[:20])}{' …' if len(names) > 20 else ''}" if names else otherwise))


def check_list_path(path: Path) -> None:
    """Refuse, before any work, a target the list cannot be written to: a folder, a device, or a file in a
    folder that does not exist or cannot be written (the writer would fail only at the end)."""
    check_output_file(path, "export:", make_parents=False, example="fakes.txt")


def write_list(bank: Bank, path: str | Path, fmt: str, flt: ExportFilter, *, model: dict | None) -> dict:
    """Write the bank's items that pass `flt` as a hash list; returns counts. One line per distinct
    (hash, source) in the text formats, every item in fakebank's own.

    The list is written beside the target and moved over it when complete: a failure leaves the target as
    it was and no temporary file behind."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    path = Path(path)
    check_list_path(path)
    tmp = path.with_name(path.name + ".tmp")
    left_out = {"min_quality": 0}
    try:
        written = _write_list(bank, tmp, fmt, flt, model, left_out)
        tmp.replace(path)
    except OSError as e:
        raise UsageError(f"{path}: the export failed midway ({e}); {path} is as it was and no partial list is "
                         f"left — check free space and permissions in {path.parent}, then export again") from e
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(path), "format": fmt, "signals": written, "below_min_quality": left_out["min_quality"],
            "min_quality": flt.min_quality}


def _write_list(bank: Bank, tmp: Path, fmt: str, flt: ExportFilter, model: dict | None,
                left_out: dict[str, int]) -> int:
    """Write the list to `tmp`; returns the number of signals written."""
    written = 0
    if fmt == "fakebank":
        schema = items_schema(bank.dim).with_metadata({PARQUET_META_KEY: json.dumps(
            {"format": 1, "model": model, "embedding_dim": bank.dim, "bank_id": bank.location}).encode()})
        with pq.ParquetWriter(tmp, schema, compression="zstd") as w:
            for t in export_batches(bank, flt, schema.names, left_out):
                w.write_table(t.cast(schema))
                written += len(t)
        return written
    seen: set[tuple[str, str | None]] = set()
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f) if fmt == "csv" else None
        if writer is not None:
            writer.writerow(CSV_COLUMNS)
        for t in export_batches(bank, flt, ("pdq", "source", "label", "tags"), left_out):
            hashes = [h.hex() for h in t.column("pdq").to_pylist()]
            for h, src, label, tag in zip(hashes, *(t.column(c).to_pylist() for c in ("source", "label", "tags"))):
                if (h, src) in seen:
                    continue
                seen.add((h, src))
                if writer is None:
                    f.write(f"{SIGNAL_TYPE} {h}\n")
                else:
                    writer.writerow([SIGNAL_TYPE, h, src or DEFAULT_COLLAB, CATEGORY_OF_LABEL[label], tag or ""])
                written += 1
    return written


# -- look-up by hash ----------------------------------------------------------------------------------------

def parse_hashes(hashes: Iterable[str]) -> np.ndarray:
    """[n, 32] uint8 codes of PDQ hex strings; a malformed one is a usage error naming it."""
    codes = []
    for h in hashes:
        s = str(h).strip().lower()
        if not _PDQ_HEX.match(s):
            raise UsageError(f"malformed PDQ hash {s[:80]!r}: expected 64 hex digits")
        codes.append(np.frombuffer(bytes.fromhex(s), np.uint8))
    return np.stack(codes) if codes else np.zeros((0, PDQ_BYTES), np.uint8)
