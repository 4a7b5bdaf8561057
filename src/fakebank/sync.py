"""`fakebank sync CONFIG`: pull signals from hash-sharing exchanges through python-threatexchange's own
exchange framework (`SignalExchangeAPI.fetch_iter`), rather than fetchers of our own (issue 12).

The config is JSON: ``{"collaborations": [{"name": …, "api": …, "label": …, <the exchange's fields>}]}``.
``api`` is a pytx exchange name (``local_file``, ``sample``, ``fb_threatexchange``, …) or
``package.module:Class`` for an exchange class of your own (as pytx extensions add them); the remaining
keys are the fields of that exchange's collaboration config (``filename`` and ``signal_type`` for
``local_file``). ``label`` (optional) overrides the label its opinions map to (``POSITIVE_CLASS`` →
fake, ``NEGATIVE_CLASS`` → real, anything else → unknown).

Each collaboration's signals become hash-only items of source = its name. The exchange's checkpoint is
stored in the bank's manifest (``sync``) in the same commit as the items, so a rerun resumes from it and a
crash never leaves items without their checkpoint. Deletions the exchange reports remove the items; an
exchange whose checkpoint says the whole state must be fetched again (pytx's ``is_stale``, e.g. ``sample``)
is treated as a snapshot: its items not fetched again are removed.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.compute as pc

from fakebank.bank import HASH_ONLY, Bank, check_label, signal_key
from fakebank.errors import FakebankError, UsageError
from fakebank.hashlists import LABEL_OF_CATEGORY, SIGNAL_TYPE, HashList, Signal, check_signal

MANIFEST_KEY = "sync"
_BUILTIN = {
    "local_file": "threatexchange.exchanges.impl.file_api:LocalFileSignalExchangeAPI",
    "sample": "threatexchange.exchanges.impl.static_sample:StaticSampleSignalExchangeAPI",
    "fb_threatexchange": "threatexchange.exchanges.impl.fb_threatexchange_api:FBThreatExchangeSignalExchangeAPI",
    "ncmec": "threatexchange.exchanges.impl.ncmec_api:NCMECSignalExchangeAPI",
    "stop_ncii": "threatexchange.exchanges.impl.stop_ncii_api:StopNCIISignalExchangeAPI",
}


@dataclass(frozen=True)
class Collab:
    name: str
    api: str
    label: str | None = None
    fields: dict = field(default_factory=dict)


@dataclass
class Fetched:
    """One collaboration's fetch: signals to hold, signals the exchange deleted, and the new checkpoint."""

    collab: Collab
    signals: HashList
    deleted: set[str]
    snapshot: bool  # the whole state was fetched: what is not in it is gone
    checkpoint: dict


def read_config(path: str | Path) -> list[Collab]:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such sync config") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: not JSON ({e})") from None
    collabs = doc.get("collaborations") if isinstance(doc, dict) else None
    if not isinstance(collabs, list) or not collabs:
        raise UsageError(f'{path}: expected {{"collaborations": [{{"name": …, "api": …}}, …]}}')
    out = []
    for n, c in enumerate(collabs):
        if not isinstance(c, dict) or not c.get("name") or not c.get("api"):
            raise UsageError(f"{path}: collaboration #{n + 1} needs a name and an api")
        rest = {k: v for k, v in c.items() if k not in ("name", "api", "label", "enabled")}
        label = c.get("label")
        if label is not None:
            check_label(label)
        out.append(Collab(c["name"], c["api"], label, rest))
    if len({c.name for c in out}) != len(out):
        raise UsageError(f"{path}: collaboration names must be distinct (each is the source of its items)")
    return out


def exchange_class(api: str):
    target = _BUILTIN.get(api, api)
    module, _, name = target.partition(":")
    if not name:
        raise UsageError(f"unknown exchange api {api!r}: use one of {', '.join(_BUILTIN)} or package.module:Class")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("threatexchange"):
            raise UsageError("sync needs python-threatexchange: pip install 'fakebank[exchange]'") from None
        raise UsageError(f"exchange api {api!r}: cannot import {module} ({e})") from None
    except AttributeError:
        raise UsageError(f"exchange api {api!r}: {module} has no {name}") from None


def fetch(collab: Collab, stored: dict | None) -> Fetched:
    """Fetch one collaboration from its stored checkpoint (None: from the start)."""
    from threatexchange.exchanges.signal_exchange_api import SignalExchangeAPIWithSimpleUpdates
    from threatexchange.signal_type.pdq.signal import PdqSignal
    from threatexchange.utils import dataclass_json

    cls = exchange_class(collab.api)
    if not issubclass(cls, SignalExchangeAPIWithSimpleUpdates):
        raise UsageError(f"{collab.name}: exchange {collab.api!r} keys its updates by its own ids; fakebank "
                         "syncs exchanges whose updates are keyed by (signal type, signal)")
    config_cls = cls.get_config_cls()
    # pytx's own configs differ: some take `api` in their constructor, some set it themselves
    base = {"name": collab.name, "api": cls.get_name(), "enabled": True}
    takes = {f.name for f in dataclasses.fields(config_cls) if f.init}
    try:
        config = config_cls(**{k: v for k, v in base.items() if k in takes}, **collab.fields)
    except TypeError as e:
        raise UsageError(f"{collab.name}: bad fields for exchange {collab.api!r} ({e})") from None
    checkpoint = None
    if stored and stored.get("api") == collab.api and stored.get("checkpoint") is not None:
        checkpoint = dataclass_json.dataclass_load_dict(stored["checkpoint"], cls.get_checkpoint_cls())
        if checkpoint.is_stale():
            checkpoint = None
    merged: dict = {}
    deleted: set[str] = set()
    last = checkpoint
    try:
        api = cls.for_collab(config)  # an exchange that needs credentials asks for them here
        for delta in api.fetch_iter([PdqSignal], checkpoint):
            for key, value in delta.updates.items():
                if value is None:
                    merged.pop(key, None)
                    if key[0] == SIGNAL_TYPE:
                        deleted.add(key[1].lower())
                else:
                    merged[key] = value
                    deleted.discard(key[1].lower())
            last = delta.checkpoint
    except FakebankError:
        raise
    except Exception as e:  # noqa: BLE001 - the exchange is pytx's code: its failure is this collaboration's
        if hasattr(e, "pretty_str"):  # pytx's missing credentials, with where it looks for them
            raise UsageError(f"{collab.name}: {' '.join(e.pretty_str().split())}") from None
        raise UsageError(f"{collab.name}: the exchange {collab.api!r} failed ({type(e).__name__}: {e}); check the "
                         "collaboration's fields, credentials and source") from None
    out = HashList(f"sync:{collab.name}", "sync")
    for n, ((stype, signal), meta) in enumerate(merged.items(), 1):
        signal = check_signal(out, n, stype, signal)
        if signal is None:
            continue
        agg = meta.get_as_aggregate_opinion()
        label = collab.label or LABEL_OF_CATEGORY.get(agg.category.name, "unknown")
        out.signals.append(Signal(signal, label=label, source=collab.name, tags=tuple(sorted(agg.tags))))
    snapshot = last is None or last.is_stale()
    ck = dataclass_json.dataclass_dump_dict(last) if last is not None else None
    return Fetched(collab, out, deleted, snapshot, ck)


def removals(bank: Bank, fetched: Fetched) -> list[int]:
    """Ids of the collaboration's items that the exchange deleted, or (snapshots) no longer holds."""
    source = fetched.collab.name
    gone: set[int] = set()
    if fetched.snapshot:
        held = {s.hash for s in fetched.signals.signals}
        t = bank.table
        # filtered in Arrow: only this collaboration's hash-only rows are turned into Python values
        mine = t.filter(pc.and_(pc.equal(t["source"], source), pc.equal(t["media"], HASH_ONLY)))
        for item_id, pdq in zip(mine["id"].to_pylist(), mine["pdq"].to_pylist()):
            if pdq.hex() not in held:
                gone.add(item_id)
    if fetched.deleted:
        found = bank.ids_of_sha256([signal_key(SIGNAL_TYPE, h, source) for h in sorted(fetched.deleted)])
        gone |= {int(i) for i in found if i >= 0}
    return sorted(gone)


def sync_state(fetched: Fetched, stored: dict | None) -> dict:
    return {"api": fetched.collab.api, "checkpoint": fetched.checkpoint,
            "fetched_at": datetime.now(timezone.utc).isoformat(), "signals": len(fetched.signals.signals),
            "runs": int((stored or {}).get("runs", 0)) + 1}
