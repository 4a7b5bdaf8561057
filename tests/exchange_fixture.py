"""A python-threatexchange exchange for tests/test_hashlists.py: reads a JSON log of signal updates (the
way real exchanges report creates, opinion changes and deletions in order) and checkpoints how far it got,
so a rerun of `fakebank sync` fetches only what is new. Offline, like pytx's own `local_file`."""

from __future__ import annotations

import json
import typing as t
from dataclasses import dataclass, field
from pathlib import Path

from threatexchange.exchanges import fetch_state as state
from threatexchange.exchanges.collab_config import CollaborationConfigWithDefaults
from threatexchange.exchanges.signal_exchange_api import SignalExchangeAPIWithSimpleUpdates


@dataclass
class _Required:
    filename: str = field(metadata={"help": "the JSON update log"})


@dataclass
class JsonUpdatesConfig(CollaborationConfigWithDefaults, _Required):
    pass


@dataclass
class AppliedCheckpoint(state.FetchCheckpointBase):
    applied: int = 0  # updates of the log already fetched


@dataclass
class Opinionated(state.FetchedSignalMetadata):
    category: str = "POSITIVE_CLASS"

    def get_as_opinions(self) -> t.Sequence[state.SignalOpinion]:
        return [state.SignalOpinion(False, state.SignalOpinionCategory[self.category], set())]


class JsonUpdatesExchange(SignalExchangeAPIWithSimpleUpdates[JsonUpdatesConfig, AppliedCheckpoint, Opinionated]):
    def __init__(self, collab: JsonUpdatesConfig) -> None:
        self.collab = collab

    @classmethod
    def get_name(cls) -> str:
        return "json_updates"

    @staticmethod
    def get_config_cls() -> t.Type[JsonUpdatesConfig]:
        return JsonUpdatesConfig

    @staticmethod
    def get_checkpoint_cls() -> t.Type[AppliedCheckpoint]:
        return AppliedCheckpoint

    @staticmethod
    def get_record_cls() -> t.Type[Opinionated]:
        return Opinionated

    @classmethod
    def for_collab(cls, collab: JsonUpdatesConfig) -> "JsonUpdatesExchange":
        return cls(collab)

    def fetch_iter(self, _types, checkpoint: AppliedCheckpoint | None):
        log = json.loads(Path(self.collab.filename).read_text())
        start = checkpoint.applied if checkpoint else 0
        updates = {}
        for (stype, signal), category in log[start:]:
            updates[stype, signal] = None if category is None else Opinionated(category)
        yield state.FetchDelta(updates, AppliedCheckpoint(applied=len(log)))


@dataclass
class StaleCheckpoint(state.FetchCheckpointBase):
    def is_stale(self) -> bool:
        return True


class JsonSnapshotExchange(JsonUpdatesExchange):
    """Every fetch is the whole current list (its checkpoint is always stale, as pytx's sample exchange's):
    a signal the list no longer holds is gone from the exchange."""

    @classmethod
    def get_name(cls) -> str:
        return "json_snapshot"

    @staticmethod
    def get_checkpoint_cls() -> t.Type[StaleCheckpoint]:
        return StaleCheckpoint

    def fetch_iter(self, _types, checkpoint):
        log = json.loads(Path(self.collab.filename).read_text())
        yield state.FetchDelta({(stype, signal): Opinionated(category) for (stype, signal), category in log},
                               StaleCheckpoint())
