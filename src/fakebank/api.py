"""The one facade that joins the extractor and the bank; the CLI and the HTTP service both call it.

Last stage before the user (embed + bank + decide → **api** → cli, service). Every JSON record the
contract (DESIGN §2) names is built here and only here, so the CLI and the service cannot drift.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from fakebank.bank import (
    HASH_ONLY_COUNT, LABELS, VIDEO, Bank, BankWriter, NewItem, check_campaign_name, check_label, check_model,
    computed_campaign, default_bank_path,
)
from fakebank.decide import HASH_ONLY_RECORD, Decision, FusionParams, Neighbor, decide, fit_fusion, fuse, knn_vote, sigmoid
from fakebank.dedup import EMBEDDING_K, DedupParams, Probe, pdq_distance, reported_cosine
from fakebank.dedup import find as dedup_find
from fakebank.dedup import groups as dedup_groups
from fakebank.index import ANN_FACTORY, ANN_MIN_ROWS, MIH_MIN_ROWS
from fakebank.outputs import check_output_file, writing
from fakebank.pdq import PDQ_MATCH_THRESHOLD, PDQ_MIN_QUALITY
from fakebank.preprocess import DEFAULT_MAX_PIXELS
from fakebank.signals import LOCAL_BANK_FEATURES
from fakebank.store import open_store
from fakebank.errors import BankError, FakebankError, InputError, UsageError
from fakebank import video as vid

KEEP: Any = object()  # `label(campaign=KEEP)`: leave the analyst campaign as it is


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".jfif", ".avif", ".heic"}
COMMIT_EVERY_ITEMS = 64  # a crash during `add` loses at most this many embedded images …
COMMIT_EVERY_S = 15.0  # … or this many seconds of work; a rerun skips what was committed
DEFAULT_K = 10
THUMBS_COMMIT_EVERY = 1024  # `make_thumbnails`: ≈ 6 MB of thumbnails per side file


def expand_inputs(paths: Sequence[str | os.PathLike], recursive: bool = False) -> list[str]:
    """Files named directly are kept as given; folders contribute their images (recursively with -r)."""
    out: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            walker = path.rglob("*") if recursive else path.iterdir()
            out.extend(str(f) for f in sorted(walker)
                       if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES | vid.VIDEO_SUFFIXES)
        else:
            out.append(str(path))  # a missing file becomes a per-input error later
    return out


class Fakebank:
    """A bank plus (lazily) the model that fills and queries it."""

    def __init__(
        self,
        bank: str | os.PathLike | None = None,
        *,
        weights: str | None = None,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int | None = None,
        positive_label: str | None = None,
        max_frames: int = vid.DEFAULT_MAX_FRAMES,
        video_rate: float = vid.DEFAULT_RATE,
        video_strategy: str = "auto",
        store: str | None = None,
        backend: str = "auto",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        """`store`: a store spec (store.open_store; None: FAKEBANK_STORE, else the folder `bank`);
        `backend`: the CPU inference backend (backends.resolve_backend)."""
        self.max_frames, self.video_rate, self.video_strategy = max_frames, video_rate, video_strategy
        self.bank_path = Path(bank) if bank else default_bank_path()
        self.store = open_store(store, self.bank_path)
        self._weights = weights
        self.device = device
        self.precision = precision
        self.batch_size = batch_size
        self.backend = backend
        self.positive_label = positive_label
        self.max_pixels = max_pixels
        self._write_lock = self.store.write_lock  # one writer per process; the store covers processes

    # -- model --------------------------------------------------------------------------------------

    def weights_spec(self) -> str | None:
        """--weights > the spec the bank was built with > FAKEBANK_WEIGHTS > the authors' release."""
        if self._weights:
            return self._weights
        try:
            model = self.store.read_manifest().get("model") or {}
        except BankError:
            model = {}
        return model.get("spec")

    @cached_property
    def extractor(self):
        from fakebank.embed import Extractor  # torch is imported only when needed
        from fakebank.model import load_model

        model = load_model(self.weights_spec(), positive_label=self.positive_label)
        # batch_size None: 8 on the CPU, sized from free memory on CUDA (the extractor decides)
        return Extractor(model, device=self.device, precision=self.precision, batch_size=self.batch_size,
                         backend=self.backend, max_pixels=self.max_pixels)

    @cached_property
    def model_info(self) -> dict:
        m = self.extractor.model
        return {
            "spec": m.spec,
            "name": m.name,
            "revision": m.revision,
            "trained": m.trained,
            "arch": m.arch,
            "identity_hash": m.identity_hash,
            "identity": m.identity,
        }

    def model_record(self) -> dict:
        info = self.model_info
        return {"name": info["name"], "revision": info["revision"], "trained": info["trained"]}

    # -- bank snapshot ------------------------------------------------------------------------------

    def open_bank(self) -> Bank:
        """The latest commit of the store (a folder of format 1 is migrated first)."""
        return self.store.open()

    def snapshot(self) -> Bank:
        """The latest committed bank, reopened only when it changed; never waits for a writer."""
        return self.store.snapshot()

    def _publish(self, bank: Bank) -> None:
        self.store.publish(bank)

    def writer(self, *, with_model: bool = True, snapshot: Bank | None = None) -> BankWriter:
        """A writer of the bank (`snapshot`: a reader the caller holds, reused when it is still the latest)."""
        if with_model:
            return self.store.writer(model_info=self.model_info, embedding_dim=self.extractor.model.embed_dim,
                                     snapshot=snapshot)
        return self.store.writer(create=False, snapshot=snapshot)

    # -- add ------------------------------------------------------------------------------------------

    def add(
        self,
        files: Iterable[str | os.PathLike],
        *,
        label: str = "fake",
        source: str | None = None,
        campaign: str | None = None,
        note: str | None = None,
        sources: Iterable | None = None,
        results: Iterable | None = None,
    ) -> Iterator[dict]:
        """Embed and add images; yields one record per input once its outcome is durable.

        Commits every COMMIT_EVERY_ITEMS images or COMMIT_EVERY_S seconds, so a crash loses little and a
        rerun skips (as `duplicate`) every image already committed. `results`: extraction done elsewhere
        (embed.Embedding / Skipped / FailedInput per input, e.g. `add_ray`'s), written the same way.
        """
        from fakebank.embed import Embedding, FailedInput, Source

        check_label(label)
        campaign = check_campaign_name(campaign)
        inputs = sources if sources is not None else (Source(os.fspath(f)) for f in files)
        inputs, videos = split_videos(inputs)
        created = not self.store.exists()
        with self.writer() as w:  # creates the bank, or refuses one made with another model, before any work
            latest = w.bank
        # The bank's lock is held only while a batch commits, so that `label`, `remove`, the service's
        # uploads and another `add` can write between batches of a long run (they wait ≤ 30 s for it).
        pending: list[tuple[NewItem, str]] = []
        seen: dict[str, str] = {}
        # inputs with the bytes of a pending item: reported with its id once it is committed
        repeats: list[tuple[str, str]] = []
        last_commit = time.monotonic()

        def flush() -> Iterator[dict]:
            nonlocal latest, pending, repeats, last_commit
            if pending:
                with self._write_lock, self.writer(snapshot=latest) as w:
                    # another writer may have added some of these files since they were looked up
                    known = {item.sha256: w.bank.id_of_sha256(item.sha256) for item, _ in pending}
                    fresh = [(item, path) for item, path in pending if known[item.sha256] is None]
                    ids = w.add([item for item, _ in fresh]) if fresh else []
                    latest = w.bank
                self._publish(latest)
                id_of = {sha: i for sha, i in known.items() if i is not None}
                added = {item.sha256 for item, _ in fresh}
                for (item, path), item_id in zip(fresh, ids):
                    id_of[item.sha256] = item_id
                for item, path in pending:
                    if item.sha256 in added:
                        yield self._add_record(path, id_of[item.sha256], item.sha256, "added", item.p_fake, label)
                    else:
                        yield self._add_record(path, id_of[item.sha256], item.sha256, "duplicate", None,
                                               latest.item(id_of[item.sha256])["label"])
                for path, sha256 in repeats:
                    yield self._add_record(path, id_of[sha256], sha256, "duplicate", None,
                                           label if sha256 in added else latest.item(id_of[sha256])["label"])
            pending, repeats = [], []
            last_commit = time.monotonic()

        if results is None:
            results = self.extractor.extract(inputs, skip=lambda sha: latest.id_of_sha256(sha) is not None
                                             or sha in seen, mirror=False, thumbnail=True)
        for result in results:
            if isinstance(result, FailedInput):
                yield self._add_record(result.path, None, None, "error", None, None, result.error)
                continue
            # Skipped (known before decoding) or embedded: either way, never add a sha256 twice.
            existing = latest.id_of_sha256(result.sha256)
            if existing is None and result.sha256 in seen:
                repeats.append((result.path, result.sha256))
                continue
            if existing is not None or not isinstance(result, Embedding):
                yield self._add_record(result.path, existing, result.sha256, "duplicate", None,
                                       latest.item(existing)["label"] if existing is not None else label)
                continue
            seen[result.sha256] = result.path
            pending.append((new_item(result, label, source, campaign, note), result.path))
            if len(pending) >= COMMIT_EVERY_ITEMS or time.monotonic() - last_commit >= COMMIT_EVERY_S:
                yield from flush()
        yield from flush()
        for src in videos:  # one commit per video: each is many frames of work
            yield self.add_video(src, label=label, source=source, campaign=campaign, note=note)
        with self._write_lock, self.writer(snapshot=latest) as w:
            if w.bank.manifest.get("dedup") is None and len(w.bank):
                w.set_manifest_entry("dedup", DedupParams().to_dict())  # the thresholds the bank matches with
            self._publish(w.bank)
            empty = len(w.bank) == 0
        if created and empty and hasattr(self.store, "discard_if_empty"):
            self.store.discard_if_empty()  # nothing went in: no bank pinned to this model

    def add_ray(self, paths: Sequence[str], *, address: str = "local", workers: int = 2, gpus: float = 0.0,
                recursive: bool = False, **labels) -> Iterator[dict]:
        """`add --ray`: extraction on a Ray cluster (raydata.py), writing here as `add` does. `paths`: files,
        folders, listings (.txt, one path or URI a line) and pyarrow filesystem URIs."""
        from fakebank import raydata

        files = raydata.inputs_of(paths, recursive, expand_inputs)
        # by extension only: sniffing would open every file of a million-line listing on the driver
        is_video = [Path(f).suffix.lower() in vid.VIDEO_SUFFIXES for f in files]
        videos = [f for f, v in zip(files, is_video) if v]  # sampled here, after the images
        results = raydata.extract(
            [f for f, v in zip(files, is_video) if not v], address=address, weights=self.weights_spec() or self.model_info["spec"], device=self.device,
            precision=self.precision, batch_size=self.extractor.batch_size, workers=workers, gpus=gpus,
            store=self.store.spec, bank_path=str(self.bank_path), skip_known=self.store.shared_readers)
        yield from self.add(videos, results=results, **labels)

    def add_embedded(self, embs: Sequence, *, label: str = "fake", source: str | None = None,
                     campaign: str | None = None, note: str | None = None) -> list[dict]:
        """Add already-embedded images in one commit (the HTTP service's path); records as `add`'s."""
        check_label(label)
        campaign = check_campaign_name(campaign)
        records: list[dict | None] = [None] * len(embs)
        with self._write_lock, self.store.writer(model_info=self.model_info,
                                                 embedding_dim=self.extractor.model.embed_dim,
                                                 snapshot=self.store.held()) as w:
            fresh, seen, repeats = [], set(), []
            for i, e in enumerate(embs):
                existing = w.bank.id_of_sha256(e.sha256)
                if e.sha256 in seen:
                    repeats.append(i)  # the bytes of an upload before it: its id once committed
                elif existing is not None:
                    records[i] = self._add_record(e.path, existing, e.sha256, "duplicate", None,
                                                  w.bank.item(existing)["label"])
                else:
                    seen.add(e.sha256)
                    fresh.append(i)
            ids = w.add([new_item(embs[i], label, source, campaign, note) for i in fresh])
            id_of = {}
            for i, item_id in zip(fresh, ids):
                id_of[embs[i].sha256] = item_id
                records[i] = self._add_record(embs[i].path, item_id, embs[i].sha256, "added", embs[i].p_fake, label)
            for i in repeats:
                records[i] = self._add_record(embs[i].path, id_of[embs[i].sha256], embs[i].sha256, "duplicate", None,
                                              label)
            self._publish(w.bank)
        return records


    @staticmethod
    def _add_record(path, item_id, sha256, status, p_fake, label, error=None) -> dict:
        return {"path": path, "id": item_id, "sha256": sha256, "status": status, "p_fake": p_fake,
                "label": label, "error": error}

    # -- query ---------------------------------------------------------------------------------------

    def query(self, files: Iterable[str], *, k: int = DEFAULT_K, sources: Iterable | None = None,
              explain: bool = False, provenance: bool = False,
              out_dir: str | os.PathLike | None = None) -> Iterator[dict]:
        """One verdict record per input (contract: DESIGN §2 `query`); `explain`/`provenance` add the
        evidence fields (see `evidence`), `out_dir` receives the heat-map overlays."""
        from fakebank.embed import FailedInput, Source

        if k < 1:
            raise UsageError(f"-k must be ≥ 1, not {k}")
        bank = self.open_bank()
        check_model(bank.manifest, self.model_info, self.store.location)
        inputs = sources if sources is not None else (Source(f) for f in files)
        inputs, videos = split_videos(inputs)
        for result in self.extractor.extract(inputs):
            if isinstance(result, FailedInput):
                yield self.query_error_record(result.path, result.error)
                continue
            yield self.query_embedded(bank, result, k, explain=explain, provenance=provenance, out_dir=out_dir)
        for src in videos:
            try:
                yield self.query_video_embedded(bank, self.embed_video(src), k)
            except FakebankError as e:
                yield self.query_error_record(src.name, str(e))

    def query_error_record(self, path: str, error: str) -> dict:
        return {"path": path, "sha256": None, "verdict": None, "reason": None, "score": None, "p_model": None,
                "p_knn": None, "match": None, "neighbors": [], "model": self.model_record(), "error": error}

    def query_embedded(self, bank: Bank, emb, k: int = DEFAULT_K, *, data: bytes | None = None,
                       explain: bool = False, provenance: bool = False, png: bool = False,
                       out_dir: str | os.PathLike | None = None) -> dict:
        """The `query` record of one embedded image against a bank snapshot (evidence options: `evidence`)."""
        params = FusionParams.from_dict(bank.manifest.get("fusion"))
        neighbors = self.neighbors(bank, emb, k, params)
        if not (explain or provenance):
            return self.query_record(emb.path, emb.sha256, decide(emb.logit, neighbors, params))
        extra = self.evidence(emb.path, emb.sha256, data, explain=explain, provenance=provenance, png=png,
                              out_dir=out_dir)
        claim = bool(extra.get("provenance") and extra["provenance"]["ai_claim"])
        return self.query_record(emb.path, emb.sha256, decide(emb.logit, neighbors, params, ai_claim=claim)) | extra

    def neighbors(self, bank: Bank, emb, k: int, params: FusionParams,
                  dedup_params: DedupParams | None = None) -> list[Neighbor]:
        """Top-k by cls cosine ∪ every near-duplicate dedup finds (PDQ, de-bordered PDQ, local features,
        embedding), closest first; each neighbour carries dedup's judgement, which `decide` follows."""
        if len(bank) == 0:
            return []
        dparams = dedup_params or DedupParams.from_dict(bank.manifest.get("dedup"))
        probe = Probe.of_embedding(emb)
        sims, ids = bank.search("cls", emb.cls[None, :], max(k, EMBEDDING_K + 1))  # one search for both uses
        matches = {m.id: m for m in dedup_find(bank, probe, dparams, cls_hits=(sims, ids))}
        candidates = {int(i) for i in ids[0][:k] if i >= 0} | set(matches)
        out = []
        for item_id in candidates:
            hash_only = bank.is_hash_only(item_id)
            sim = 0.0 if hash_only else float(bank.vector("cls", item_id) @ emb.cls)
            m = matches.get(item_id)
            out.append(Neighbor(
                id=item_id, path=bank.value(item_id, "path"), label=bank.label_of(item_id),
                campaign=bank.campaign_of(item_id), similarity=reported_cosine(sim),
                pdq_distance=m.pdq_distance if m else pdq_distance(bank, probe, item_id),
                signal=m.signal if m else None, judged=True, hash_only=hash_only,
                inliers=m.inliers if m else None, spatial_agreement=m.spatial_agreement if m else None,
            ))
        out.sort(key=lambda n: -n.similarity)
        return out

    # -- evidence: patch heat maps and provenance (DESIGN §1.7), only when asked ----------------------

    def evidence(self, path: str, sha256: str, data: bytes | None = None, *, explain: bool = False,
                 provenance: bool = False, png: bool = False, out_dir: str | os.PathLike | None = None) -> dict:
        """`{"provenance": …}` and/or `{"heatmap": …}` for one input (`data`: its bytes; None → read `path`).

        provenance: `provenance.read_provenance` of the bytes, before decoding. heatmap: `explain`'s grid
        (one extra forward + backward pass); `png` adds the overlay as base64 PNG, `out_dir` writes it there
        and names the file in `"overlay"`."""
        if data is None:
            data = _read_input(path)
        out: dict = {}
        if provenance:
            from fakebank.provenance import read_provenance

            out["provenance"] = read_provenance(data).to_dict()
        if explain:
            heat = self.heatmap(data, name=path)
            rec = heat.to_record()
            if png or out_dir is not None:
                blob = heat.overlay_png()
                if png:
                    rec["png_base64"] = base64.b64encode(blob).decode("ascii")
                if out_dir is not None:
                    rec["overlay"] = str(_write_overlay(Path(out_dir), path, sha256, blob))
            out["heatmap"] = rec
        return out

    def heatmap(self, data: bytes, *, name: str):
        """The patch heat map of one image file's bytes, with the loaded model (fakebank.explain)."""
        from fakebank.explain import explain_image
        from fakebank.preprocess import load_rgb

        img = load_rgb(data, name=name, max_pixels=self.extractor.max_pixels)
        return explain_image(self.extractor.model, img)

    def explain(self, path: str | os.PathLike, *, out: str | os.PathLike | None = None,
                deletion: bool = True) -> dict:
        """`fakebank explain`: the heat map of one image, its overlay written to `out`, and (by default) the
        deletion test that checks the map on this image. Needs no bank."""
        from fakebank.explain import deletion_test, explain_image
        from fakebank.preprocess import load_rgb, to_array

        path = os.fspath(path)
        if out is not None:  # before the work, not after it
            out = check_output_file(out, "--out", example="heat.png")
        data = _read_input(path)
        if vid.is_video(path, data[:vid.SNIFF_BYTES]):
            raise UsageError(f"{path} is a video; explain draws the heat map of one image: save the frame you "
                             "want as an image (e.g. `ffmpeg -ss 12 -i clip.mp4 -frames:v 1 frame.png`) and explain that")
        model = self.extractor.model
        img = load_rgb(data, name=path, max_pixels=self.extractor.max_pixels)
        heat = explain_image(model, img)
        pixels = to_array(img, model.preprocessing)
        record: dict = {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "heatmap": heat.to_record()}
        if deletion:
            d = deletion_test(model, pixels, heat.relevance)
            record["p_model"] = round(sigmoid(d.logit), 6)
            record["deletion"] = d.to_record()
        else:
            record["p_model"] = round(float(self.extractor.embed_pixels(pixels[None])[1][0]), 6)
            record["deletion"] = None
        if out is not None:
            with writing(out, "--out"):
                heat.overlay().save(out, format="PNG")
            record["heatmap"]["overlay"] = str(out)
        record["model"] = self.model_record()
        return record

    # -- near-duplicates (DESIGN §1.6, §2 `dupes`) ----------------------------------------------------

    def dedup_params(self, bank: Bank | None = None, **overrides) -> DedupParams:
        """The bank's stored thresholds (or the defaults) with the given ones (None: keep) replaced."""
        bank = bank or self.open_bank()
        return DedupParams.from_dict(bank.manifest.get("dedup")).with_overrides(**overrides)

    def dupes(self, files: Iterable[str], *, params: DedupParams | None = None,
              sources: Iterable | None = None) -> Iterator[dict]:
        """Per input, the bank items dedup judges near-duplicates of it (contract: DESIGN §2 `dupes`)."""
        from fakebank.embed import FailedInput, Source

        bank = self.open_bank()
        check_model(bank.manifest, self.model_info, self.store.location)
        params = params or self.dedup_params(bank)
        inputs = sources if sources is not None else (Source(f) for f in files)
        inputs, videos = split_videos(inputs)
        for result in self.extractor.extract(inputs):
            if isinstance(result, FailedInput):
                yield {"path": result.path, "duplicates": [], "error": result.error}
                continue
            yield self.dupes_record(bank, result.path, dedup_find(bank, Probe.of_embedding(result), params))
        for src in videos:
            try:
                yield self.dupes_video_embedded(bank, self.embed_video(src), params)
            except FakebankError as e:
                yield {"path": src.name, "duplicates": [], "error": str(e)}

    def dupes_embedded(self, bank: Bank, emb) -> dict:
        """The `dupes` record of one embedded image against a bank snapshot (the HTTP service's path)."""
        return self.dupes_record(bank, emb.path, dedup_find(bank, Probe.of_embedding(emb), self.dedup_params(bank)))

    @staticmethod
    def dupes_record(bank: Bank, path: str, matches: list) -> dict:
        def record(m) -> dict:
            rec = {"id": m.id, "path": bank.value(m.id, "path"), "similarity": m.similarity,
                   "pdq_distance": m.pdq_distance, "signal": m.signal, "inliers": m.inliers,
                   "spatial_agreement": m.spatial_agreement}
            if bank.is_hash_only(m.id):
                rec.update(HASH_ONLY_RECORD)
            return rec

        return {"path": path, "duplicates": [record(m) for m in matches]}

    def dupe_groups(self, *, params: DedupParams | None = None, progress=None) -> Iterator[dict]:
        """Groups of near-duplicates inside the bank, largest first: `{"group": [ids], "paths": [...]}`.
        Needs no model: every item's stored hashes, features and embedding probe the bank's indexes."""
        bank = self.open_bank()
        for group in dedup_groups(bank, params or self.dedup_params(bank), progress=progress):
            yield {"group": group, "paths": [bank.value(i, "path") for i in group]}

    def save_dedup_params(self, params: DedupParams) -> None:
        """Store thresholds in the bank's manifest: `query`'s match and `dupes` use them from then on."""
        stored = replace(params, source=f"stored by dupes --save, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
        with self._write_lock, self.writer(with_model=False) as w:
            w.set_manifest_entry("dedup", stored.to_dict())

    def query_record(self, path: str, sha256: str, d: Decision) -> dict:
        return {
            "path": path,
            "sha256": sha256,
            "verdict": d.verdict,
            "reason": d.reason,
            "score": round(d.score, 6),
            "p_model": round(d.p_model, 6),
            "p_knn": None if d.p_knn is None else round(d.p_knn, 6),
            "match": d.match.match_dict() | {"disputed_by": d.disputed_by} if d.match else None,
            "neighbors": [n.to_dict() for n in d.neighbors],
            "model": self.model_record(),
        }

    # -- videos (DESIGN §1.7; video.py): one item per video, many frames --------------------------------

    def embed_video(self, src, *, mirror: bool = True, embed=None) -> vid.VideoEmbedding:
        """Sample and embed one video (a Source: path, or uploaded bytes) with this Fakebank's settings."""
        return vid.embed_video(self.extractor, src.name, src.data, rate=self.video_rate, max_frames=self.max_frames,
                               strategy=self.video_strategy, mirror=mirror, embed=embed)

    def add_video(self, src, *, label: str, source: str | None = None, campaign: str | None = None,
                  note: str | None = None) -> dict:
        """Add one video as one item (committed before the record is returned); `add`'s record plus
        `"media": "video"` and the `frames` summary. The frames are embedded before the bank is locked."""
        campaign = check_campaign_name(campaign)
        try:
            sha = hashlib.sha256(src.data).hexdigest() if src.data is not None else vid.file_sha256(src.name)
            known = self.store.snapshot()
            existing = known.id_of_sha256(sha) if len(known) else None
            if existing is None:
                vemb = vid.embed_video(self.extractor, src.name, src.data, sha256=sha, rate=self.video_rate,
                                       max_frames=self.max_frames, strategy=self.video_strategy, mirror=False,
                                       thumbnail=True)
                with self._write_lock, self.writer() as w:
                    existing = w.bank.id_of_sha256(sha)  # another writer may have added it meanwhile
                    if existing is None:
                        item = video_item(vemb, label, source, campaign, note, w.bank.dim)
                        (item_id,) = w.add([item])
                    self._publish(w.bank)
                    bank = w.bank
            else:
                bank = known
        except InputError as e:  # this video's failure; a bank that cannot be written stops the run, as for images
            return self._add_record(src.name, None, None, "error", None, None, str(e)) | {"media": "video"}
        if existing is not None:
            return self._add_record(src.name, existing, sha, "duplicate", None, bank.item(existing)["label"]) \
                | {"media": "video"}
        return self._add_record(src.name, item_id, sha, "added", item.p_fake, label) | {
            "media": "video", "frames": vemb.summary()}

    def query_video_embedded(self, bank: Bank, vemb: vid.VideoEmbedding, k: int = DEFAULT_K) -> dict:
        """The `query` record of a video: the image record's fields (from the frame that drove the verdict,
        or the known copy) plus `"media": "video"` and `frames` (sampling, the driving frame, matched banked
        videos and items seen in its frames, with their times). The rule: video.video_decision."""
        params = FusionParams.from_dict(bank.manifest.get("fusion"))
        dparams = DedupParams.from_dict(bank.manifest.get("dedup"))
        decisions = [decide(e.logit, self.neighbors(bank, e, k, params, dparams), params) for e in vemb.embeddings]
        videos = vid.vpdq_matches(bank, vemb.frames)
        matched = {m.id for m in videos}
        items = vid.frame_matches(vemb.frames, [d.neighbors for d in decisions], skip=matched.__contains__)
        labels = {i: bank.label_of(i) for i in matched | {m.neighbor.id for m in items}}
        by_id = {m.id: m for m in videos}
        vd = vid.video_decision(vemb.frames, decisions, videos, items, labels,
                                lambda i: self._video_neighbor(bank, i, vemb, by_id[i]), params)
        record = self.query_record(vemb.path, vemb.sha256, vd.decision)
        if record["match"] is not None:
            if vd.match_kind == "video":
                m = by_id[vd.decision.match.id]
                record["match"] |= {"signal": "vpdq", "timestamps": m.timestamps, **_vpdq_dict(m.vpdq)}
            else:
                hit = next(h for h in items if h.neighbor.id == vd.decision.match.id)
                record["match"] |= {"signal": hit.signal, "timestamps": hit.timestamps}
        f = vemb.frames[vd.frame]
        record["media"] = "video"
        record["frames"] = vemb.summary() | {
            "driving": {"frame_number": f.number, "timestamp": round(f.timestamp, 3)},
            "videos": [{"id": m.id, "path": bank.value(m.id, "path"), "label": labels[m.id], "timestamps": m.timestamps,
                        "pdq_distance": m.min_distance, **_vpdq_dict(m.vpdq)} for m in videos],
            "items": [{"id": h.neighbor.id, "path": h.neighbor.path, "label": labels[h.neighbor.id],
                       "signal": h.signal, "timestamps": h.timestamps} for h in items],
        }
        return record

    def dupes_video_embedded(self, bank: Bank, vemb: vid.VideoEmbedding, params: DedupParams | None = None) -> dict:
        """The `dupes` record of a video: banked videos matched by vPDQ's rule (signal `vpdq`) and banked
        items seen in ≥ video.MIN_FRAME_HITS of its frames (their dedup signal), each with the query's times."""
        params = params or self.dedup_params(bank)
        videos = vid.vpdq_matches(bank, vemb.frames)
        matched = {m.id for m in videos}
        per_frame = [[Neighbor(id=m.id, path=bank.value(m.id, "path"), label=bank.label_of(m.id),
                               campaign=bank.campaign_of(m.id), similarity=m.similarity,
                               pdq_distance=m.pdq_distance, signal=m.signal, judged=True)
                      for m in dedup_find(bank, Probe.of_embedding(e), params)] for e in vemb.embeddings]
        items = vid.frame_matches(vemb.frames, per_frame, skip=matched.__contains__)
        dupes = [{"id": m.id, "path": bank.value(m.id, "path"),
                  "similarity": self._video_neighbor(bank, m.id, vemb, m).similarity, "pdq_distance": m.min_distance,
                  "signal": "vpdq", "timestamps": m.timestamps, **_vpdq_dict(m.vpdq)} for m in videos]
        dupes += [{"id": h.neighbor.id, "path": h.neighbor.path, "similarity": h.neighbor.similarity,
                   "pdq_distance": h.neighbor.pdq_distance, "signal": h.signal, "timestamps": h.timestamps}
                  for h in items]
        return {"path": vemb.path, "duplicates": dupes, "media": "video", "frames": vemb.summary()}

    @staticmethod
    def _video_neighbor(bank: Bank, item_id: int, vemb: vid.VideoEmbedding, m: vid.VideoMatch) -> Neighbor:
        """A banked video as a neighbour: similarity = the best cls cosine between a query frame and one of
        its stored frames; pdq_distance = the closest frame hashes."""
        stored = vid.unpack_frames(bank.value(item_id, "frames"))["cls"].astype(np.float32)
        query = np.stack([f.cls for f in vemb.frames])
        sim = float((query @ stored.T).max()) if len(stored) else 0.0
        return Neighbor(id=item_id, path=bank.value(item_id, "path"), label=bank.label_of(item_id),
                        campaign=bank.campaign_of(item_id), similarity=reported_cosine(sim),
                        pdq_distance=m.min_distance, signal="vpdq", judged=True)

    def vpdq(self, path: str | os.PathLike | bytes, *, strategy: str = "exact", upright: bool = False,
             name: str | None = None) -> list[vid.VpdqFeature]:
        """vPDQ features of a video file (or its bytes, `name` for messages) as vpdq-hash-video computes them:
        frames chosen alike (`exact`: every int(fps)-th decoded frame), hashed at full resolution, as coded
        (`upright`: the display rotation applied, which vPDQ does not do). Needs no model and no bank."""
        from fakebank.pdq import pdq_hash

        with vid.VideoReader(path, name=name, rate=self.video_rate, max_frames=self.max_frames, strategy=strategy,
                             upright=upright) as reader:
            return [vid.VpdqFeature(f.number, (h := pdq_hash(f.image, max_side=None)).quality, h.hex,
                                    round(f.timestamp, vid.VPDQ_TIMESTAMP_PRECISION)) for f in reader]

    # -- hash lists (hashlists.py; issue 12) --------------------------------------------------------

    def _list_writer(self) -> BankWriter:
        """A writer of the bank, created with the model's identity when it does not exist yet (a bank of
        hashes only still records the model its images will be embedded with)."""
        if self.store.exists():
            return self.writer(with_model=False)
        return self.writer()

    def import_list(self, path: str | os.PathLike, *, fmt: str | None = None, signal_type: str | None = None,
                    label: str = "fake", source: str | None = None) -> dict:
        """`fakebank import`: one commit of the list's good signals (new → hash-only items, known → labels,
        tags and notes updated); the bad lines are reported by number and skipped."""
        from fakebank.hashlists import plan_import, read_list

        hl = read_list(path, fmt, signal_type=signal_type, label=label, source=source)
        with self._write_lock, self._list_writer() as w:
            identity = (w.bank.manifest.get("model") or {}).get("identity_hash")
            plan = plan_import(w.bank, hl, model_identity=identity)
            ids = w.apply(plan.items, plan.changes)
            self._publish(w.bank)
        return {"path": os.fspath(path), "format": hl.format, "signals": len(hl.signals), "added": len(ids),
                "updated": plan.updated, "unchanged": plan.unchanged, "repeated_in_list": plan.duplicates,
                "hash_only": plan.hash_only or hl.rows is None,
                "note": ("the list was embedded by another model (identity "
                         f"{(hl.model_identity or '?')[:12]}): only its hashes were imported") if plan.hash_only else None,
                "errors": [{"line": n, "error": e} for n, e in hl.errors], "error_count": hl.error_count}

    def export_list(self, path: str | os.PathLike, *, fmt: str, labels: Sequence[str] = ("fake",),
                    source: str | None = None, campaign: str | None = None, min_quality: int | None = None) -> dict:
        """`fakebank export`: the bank's items (by default its fakes) as a hash list a partner can read.
        `min_quality` (default: PDQ's bar of 50 for the hash lists, 0 for fakebank's own full export, which
        moves a bank: a flat photo's hash matches noise at a partner, but its embeddings still count)."""
        from fakebank.hashlists import ExportFilter, write_list

        from fakebank.hashlists import FORMATS

        if fmt not in (*FORMATS, "vpdq"):
            raise UsageError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}, vpdq")
        for label in labels:
            check_label(label)
        if fmt == "local_file" and set(labels) != {"fake"}:
            raise UsageError("a local_file list carries no label: a partner (and `fakebank import`) reads every line "
                             "as a fake; export real or unknown items with --format csv (its category column says "
                             "which) or --format fakebank")
        bank = self.open_bank()
        if min_quality is None:
            min_quality = 0 if fmt == "fakebank" else PDQ_MIN_QUALITY
        flt = ExportFilter(labels=tuple(labels), source=source, campaign=campaign, min_quality=min_quality)
        if fmt == "vpdq":
            return _export_vpdq(bank, Path(path), replace(flt, min_quality=0))
        return write_list(bank, path, fmt, flt, model=bank.manifest.get("model"))

    def sync(self, config: str | os.PathLike) -> Iterator[dict]:
        """`fakebank sync`: per collaboration of the config, fetch from its stored checkpoint (outside the
        lock: exchanges are slow), then one commit of its new/updated/deleted signals and new checkpoint."""
        from fakebank.hashlists import plan_import
        from fakebank import sync as exchanges

        for collab in exchanges.read_config(config):
            try:
                stored = (self.store.read_manifest().get(exchanges.MANIFEST_KEY) or {}).get(collab.name)
            except BankError:
                stored = None
            fetched = exchanges.fetch(collab, stored)
            with self._write_lock, self._list_writer() as w:
                state = dict(w.bank.manifest.get(exchanges.MANIFEST_KEY) or {})
                plan = plan_import(w.bank, fetched.signals, model_identity=None)
                gone = set(exchanges.removals(w.bank, fetched))
                changes = [c for c in plan.changes if c[0] not in gone] + [(i, "remove", None) for i in sorted(gone)]
                state[collab.name] = exchanges.sync_state(fetched, state.get(collab.name))
                ids = w.apply(plan.items, changes, settings={exchanges.MANIFEST_KEY: state})
                self._publish(w.bank)
            yield {"collaboration": collab.name, "api": collab.api, "signals": len(fetched.signals.signals),
                   "added": len(ids), "updated": len({c[0] for c in changes if c[1] != "remove"}),
                   "removed": len(gone), "unchanged": plan.unchanged, "snapshot": fetched.snapshot,
                   "errors": [{"line": n, "error": e} for n, e in fetched.signals.errors],
                   "error_count": fetched.signals.error_count}

    def lookup(self, hashes: Sequence[str], *, max_distance: int = PDQ_MATCH_THRESHOLD) -> list[dict]:
        """Per PDQ hash (hex), the bank's items within `max_distance` bits, closest first. No model needed."""
        from fakebank.hashlists import parse_hashes

        if not 0 <= max_distance <= 64:
            raise UsageError(f"max distance {max_distance} is outside 0..64 bits")
        codes = parse_hashes(hashes)
        bank = self.snapshot()
        hits = [sorted(found, key=lambda h: (h[1], h[0])) for found in bank.pdq_within(codes, max_distance)] \
            if len(codes) else []
        ids = sorted({i for found in hits for i, _ in found})
        names = ("label", "source", "campaign", "media", "path")
        columns = bank.read_columns(ids, names) if ids else {}  # one bulk read (one round trip on Milvus)
        of = {i: {n: columns[n][k] for n in names} for k, i in enumerate(ids)}
        for i, row in of.items():  # as a query names it: the analyst's, else the computed one
            row["campaign"] = row["campaign"] or computed_campaign(bank, i)
        return [{"pdq": code.tobytes().hex(),
                 "matches": [{"id": i, "distance": d, **of[i], "media": of[i]["media"] or "image"} for i, d in found]}
                for code, found in zip(codes, hits)]

    # -- maintenance -----------------------------------------------------------------------------

    def info(self) -> dict:
        """What the manifest says (no segment is opened: this costs the same at any size). `dedup`: the
        near-duplicate thresholds `query`'s match and `dupes` use (stored by `dupes --save`, else the defaults)."""
        m = self.store.read_manifest()
        model = m.get("model") or {}
        # Not FusionParams' own copy thresholds: dedup judges every neighbour the api looks up, so those are only
        # the fallback for neighbours built by hand (decide.is_near_duplicate), and shown here they would
        # contradict the `dedup` settings that do decide (a stored PDQ threshold of 4 beside a fusion one of 31).
        fusion = {k: v for k, v in FusionParams.from_dict(m.get("fusion")).to_dict().items()
                  if k not in ("pdq_threshold", "duplicate_similarity")}
        return {
            "bank": self.store.location,
            "format_version": m["format_version"],
            "items": m["counts"]["items"],
            "labels": {k: v for k, v in m["counts"].items() if k in LABELS},
            "hash_only": m["counts"].get(HASH_ONLY_COUNT, 0),
            "model": {k: model.get(k) for k in ("name", "revision", "trained", "arch", "spec", "identity_hash")},
            "embedding_dim": m["embedding_dim"],
            "indexes": {k: v["factory"] for k, v in m.get("indexes", {}).items()} if m["format_version"] == 1 else {
                "cls": "FLAT (IP)", "pdq": "BIN_FLAT (HAMMING)", "pdq_trim": "BIN_FLAT (HAMMING)",
                "local": "BIN_FLAT (HAMMING)"} if self.store.kind != "folder" else {
                "cls": f"{ANN_FACTORY} per segment of ≥ {ANN_MIN_ROWS} items, exact below; re-ranked exactly",
                "pdq": f"multi-index hashing per segment of ≥ {MIH_MIN_ROWS} items, BinaryFlat below",
                "pdq_trim": f"multi-index hashing per segment of ≥ {MIH_MIN_ROWS} items, BinaryFlat below",
                "local": ("BinaryIVF per segment over the bank's " + f"{m['local_quantizer']['nlist']} cells"
                          if m.get("local_quantizer") else "BinaryFlat per segment")},
            **self.store.info_storage(m),
            "dedup": DedupParams.from_dict(m.get("dedup")).to_dict(),
            "fusion": fusion,
            "created_at": m["created_at"],
            "updated_at": m["updated_at"],
        }

    def label(self, ids: Sequence[int], label: str | None = None, *, campaign: str | None = KEEP) -> list[dict]:
        """Set items' label and/or analyst campaign (`campaign=None` or "" clears it), in one commit.
        The analyst campaign is ground truth for `fakebank campaigns` from its next run."""
        if label is None and campaign is KEEP:
            raise UsageError("nothing to change: give a label (--label) and/or a campaign (--campaign)")
        if label is not None:
            check_label(label)
        if campaign is not KEEP:
            campaign = check_campaign_name(campaign)
        ids = list(dict.fromkeys(int(i) for i in ids))  # an id given twice is one change, one record
        changes = [(i, "label", label) for i in ids if label is not None]
        changes += [(i, "analyst_campaign", campaign) for i in ids if campaign is not KEEP]
        # the last run's assignment may name the analyst campaign just changed: it follows the analyst
        # (cleared: no campaign) until the next `fakebank campaigns` run
        changes += [(i, "campaign", campaign) for i in ids if campaign is not KEEP]
        with self.writer(with_model=False) as w:
            w.apply([], changes)
            bank = w.bank
            # the record names the campaign only when it was changed (a relabel's record is as before)
            return [{"id": i, "label": label if label is not None else bank.label_of(i),
                     **({} if campaign is KEEP else {"campaign": campaign}), "status": "updated"} for i in ids]

    def remove(self, ids: Sequence[int]) -> list[dict]:
        ids = list(dict.fromkeys(int(i) for i in ids))
        with self.writer(with_model=False) as w:
            w.remove(ids)
            return [{"id": i, "status": "removed"} for i in ids]

    # -- thumbnails ---------------------------------------------------------------------------------

    def item_thumbnail(self, bank: Bank, item_id: int) -> bytes | None:
        """The item's stored thumbnail, else one made now from its original file when that is still
        there unchanged (not stored: `make_thumbnails` stores them); None when neither exists."""
        from fakebank.thumbnails import stored_or_fresh

        return stored_or_fresh(bank, item_id)

    def make_thumbnails(self) -> Iterator[dict]:
        """`fakebank thumbnails`: make and store the thumbnail of every item that has none, from its original
        file where that is still there unchanged. One record per such item, yielded once committed:
        `{"id", "path", "status": "added"|"error", "error"}`. Commits every THUMBS_COMMIT_EVERY, so a
        crash loses little and a rerun resumes. Needs no model."""
        from fakebank.thumbnails import thumbnail_of_file

        bank = self.open_bank()
        made: dict[int, bytes] = {}

        def flush() -> Iterator[dict]:
            with self._write_lock, self.writer(with_model=False) as w:
                live = {i: t for i, t in made.items() if w.bank.has(i)}  # removed meanwhile: skip
                w.add_thumbnails(live)
            for i in made:
                yield self._thumb_record(bank, i, "added" if i in live else "error",
                                         None if i in live else "removed while its thumbnail was made")
            made.clear()

        for item_id in bank.missing_thumbnails():
            try:
                if bank.value(item_id, "media") == VIDEO:
                    made[item_id] = vid.thumbnail_of_video(bank.value(item_id, "path"), bank.value(item_id, "sha256"),
                                                           bank.value(item_id, "frames"))
                else:
                    made[item_id] = thumbnail_of_file(bank.value(item_id, "path"), bank.value(item_id, "sha256"))
            except InputError as e:
                yield self._thumb_record(bank, item_id, "error", str(e))
                continue
            if len(made) >= THUMBS_COMMIT_EVERY:
                yield from flush()
        if made:
            yield from flush()

    @staticmethod
    def _thumb_record(bank: Bank, item_id: int, status: str, error: str | None = None) -> dict:
        return {"id": item_id, "path": bank.value(item_id, "path"), "status": status, "error": error}

    def compact(self, progress=None) -> dict:
        """Merge every segment and fold the delta files in (explicit: costs the bank's size)."""
        with self._write_lock, self.writer(with_model=False) as w:
            return {"bank": self.store.location, **w.compact(progress=progress)}

    # -- campaigns (DESIGN §1.6) ---------------------------------------------------------------------

    def campaigns(self, *, min_size: int = 2, similarity: float | None = None, min_p_fake: float | None = None,
                  local: bool | None = None, embedding_attach: bool | None = None, recompute: bool = True,
                  save: bool = True) -> list[dict]:
        """One record per campaign of ≥ min_size items, largest first (contract: DESIGN §2 `campaigns`)."""
        bank, result = self.campaign_run(similarity=similarity, min_p_fake=min_p_fake, local=local,
                                          embedding_attach=embedding_attach, recompute=recompute, save=save)
        return self.campaign_records(bank, result, min_size=min_size)

    def campaign_run(self, *, similarity: float | None = None, min_p_fake: float | None = None,
                     local: bool | None = None, embedding_attach: bool | None = None, recompute: bool = True,
                     save: bool = True):
        """Cluster the flagged items of the latest snapshot and (with `save`) store the assignments.

        Returns (snapshot, CampaignResult). Ids stay stable across runs; `recompute=False` lists the stored
        campaigns without clustering. The model is never loaded.
        """
        from fakebank import campaigns as cp

        bank = self.open_bank()
        info = bank.manifest.get("campaigns") or {}
        overrides = {"similarity": similarity, "min_p_fake": min_p_fake, "local": local,
                     "embedding_attach": embedding_attach}
        params = cp.CampaignParams(**{k: v for k, v in overrides.items() if v is not None})
        if not recompute:
            return bank, cp.result_from_stored(bank, bank.campaign_assignments(), params, info.get("next_number", 1))
        clusters = cp.find_clusters(bank, params)
        previous = bank.campaign_assignments()
        result = cp.name_clusters(clusters, previous, info.get("next_number", 1))
        if save:
            with self._write_lock, self.writer(with_model=False) as w:
                latest = w.bank.manifest.get("campaigns") or {}
                if latest.get("file") != info.get("file"):  # another run stored meanwhile: keep its ids
                    previous = w.bank.campaign_assignments()
                    result = cp.name_clusters(clusters, previous, latest.get("next_number", 1))
                table = result.assignments()
                if not (_same_rows(table, previous) and latest.get("params") == params.to_dict()
                        and latest.get("next_number") == result.next_number):
                    w.commit_campaigns(table, {
                        "params": params.to_dict(), "next_number": result.next_number,
                        "computed_at": datetime.now(timezone.utc).isoformat(),
                        "generation_clustered": bank.manifest["generation"], "campaigns": len(result.campaigns),
                    }, clustered=bank)
        return bank, result

    @staticmethod
    def campaign_records(bank: Bank, result, *, min_size: int = 2) -> list[dict]:
        from fakebank.campaigns import summarize

        if min_size < 1:
            raise UsageError(f"--min-size must be ≥ 1, not {min_size}")
        return summarize(bank, result.campaigns, min_size=min_size)

    @staticmethod
    def campaign_report(path: str | os.PathLike, bank: Bank, result, records: list[dict]) -> Path:
        """The self-contained HTML report of `records` (thumbnails embedded from the items' paths)."""
        from fakebank.campaigns import write_report

        path = check_output_file(path, "--report", example="campaigns.html")
        with writing(path, "--report"):
            return write_report(path, bank, records, result.events, params=result.params)

    def calibrate(self, folder: str | os.PathLike, *, k: int = DEFAULT_K, force: bool = False) -> dict:
        """Fit the fusion weights on DIR/fake and DIR/real against this bank; store them in the manifest
        unless the fit has a problem (`decide.fit_problems`; `force` stores it anyway)."""
        from fakebank.decide import fit_problems
        from fakebank.embed import Embedding

        folder = Path(folder)
        if not (folder / "fake").is_dir() or not (folder / "real").is_dir():
            raise UsageError(f"{folder} must hold fake/ and real/ sub-folders of images")
        fake, real = expand_inputs([folder / "fake"], True), expand_inputs([folder / "real"], True)
        skipped = [p for p in fake + real if vid.is_video(p)]  # the fusion is fitted on images' logits
        skipped_set = set(skipped)
        fake, real = ([p for p in ps if p not in skipped_set] for ps in (fake, real))
        if not fake or not real:
            raise UsageError(f"{folder}: need images in both fake/ ({len(fake)}) and real/ ({len(real)})")
        bank = self.open_bank()
        check_model(bank.manifest, self.model_info, self.store.location)
        base = FusionParams.from_dict(bank.manifest.get("fusion"))
        truth = {p: 1 for p in fake} | {p: 0 for p in real}
        logits, knn, ys, failed = [], [], [], []
        for e in self.extractor.extract(fake + real):
            if not isinstance(e, Embedding):
                failed.append(e.path)
                continue
            # An image that is itself in the bank would teach the fusion to trust exact copies only.
            neigh = [n for n in self.neighbors(bank, e, k + 1, base) if n.id != bank.id_of_sha256(e.sha256)][:k]
            logits.append(e.logit)
            knn.append(knn_vote(neigh, base))
            ys.append(truth[e.path])
        if len(set(ys)) < 2:
            raise UsageError(f"{folder}: too few decodable images of each class to calibrate")
        y = np.asarray(ys)
        before = _scores(np.asarray(logits), knn, base)
        fitted = fit_fusion(np.asarray(logits), knn, y, base)
        fitted = FusionParams(**{**fitted.to_dict(),
                                 "source": f"calibrate {folder} on {datetime.now(timezone.utc).date()}"})
        after = _scores(np.asarray(logits), knn, fitted)
        metrics = {"before": _metrics(before, y, base.threshold), "after": _metrics(after, y, fitted.threshold)}
        problems, warnings = fit_problems(fitted, metrics["before"], metrics["after"], int(y.sum()), int(len(y) - y.sum()))
        stored = force or not problems
        if stored:
            with self.writer(with_model=False) as w:
                w.set_fusion(fitted.to_dict())
        return {
            "images": len(y), "fake": int(y.sum()), "real": int(len(y) - y.sum()), "failed": failed,
            "skipped_videos": skipped, **metrics, "fusion": fitted.to_dict(), "stored": stored,
            "problems": problems, "warnings": warnings,
        }


def _export_vpdq(bank: Bank, folder: Path, flt) -> dict:
    """`export --format vpdq`: one `<id>.txt` of vPDQ lines (frame_number,quality,pdq_hex,timestamp) per
    banked video that passes the filter, as Meta's vpdq-hash-video writes them (images have none)."""
    from fakebank.hashlists import export_batches
    from fakebank.video import item_vpdq, write_vpdq

    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder}: --format vpdq writes one file per video; name a folder")
    ids = [i for t in export_batches(bank, flt, ("id", "media"))  # the filter's errors before the folder is made
           for i, media in zip(t.column("id").to_pylist(), t.column("media").to_pylist()) if media == VIDEO]
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for item_id in ids:
        features = item_vpdq(bank, item_id)
        if features:
            write_vpdq(features, folder / f"{item_id}.txt")
            written += 1
    return {"path": str(folder), "format": "vpdq", "signals": written}


def _write_overlay(folder: Path, path: str, sha256: str, blob: bytes) -> Path:
    """`<folder>/<stem>.<sha256[:12]>.heat.png`: distinct per image even when names repeat."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out-dir {folder} is a file; name a folder")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{Path(path).stem}.{sha256[:12]}.heat.png"
    target.write_bytes(blob)
    return target


def new_item(emb, label: str, source: str | None, campaign: str | None, note: str | None) -> NewItem:
    """The bank row of an embedded image."""
    sig = getattr(emb, "signals", None)
    return NewItem(
        sha256=emb.sha256, path=emb.path, label=label, p_fake=emb.p_fake, logit=emb.logit,
        pdq=emb.pdq.hash, pdq_quality=emb.pdq.quality, cls=emb.cls, patch=emb.patch,
        width=emb.width, height=emb.height, source=source, campaign=campaign, note=note,
        pdq_dihedral=b"".join(emb.pdq.dihedral[1:]),
        pdq_trim=sig.pdq_trim.hash if sig is not None and sig.pdq_trim is not None else None,
        pdq_trim_quality=sig.pdq_trim.quality if sig is not None and sig.pdq_trim is not None else None,
        local=sig.local.strongest(LOCAL_BANK_FEATURES).to_bytes() if sig is not None and len(sig.local) else None,
        thumbnail=getattr(emb, "thumbnail", None),
        patch_grid=grid.to_bytes() if (grid := getattr(emb, "patch_grid", None)) is not None else None,
    )


def split_videos(inputs: Iterable) -> tuple[list, list]:
    """(images, videos) among Sources or paths: a video by extension, else by its first bytes, whatever its
    name (a clip saved as .jpg is still a video; a real image is never taken for one: `vid.sniff_video`)."""
    from fakebank.embed import Source

    images, videos = [], []
    for src in inputs:
        src = Source(os.fspath(src.name), src.data) if isinstance(src, Source) else Source(os.fspath(src))
        is_video = vid.is_video(src.name, src.data)
        (videos if is_video else images).append(src)
    return images, videos


def video_item(vemb: vid.VideoEmbedding, label: str, source: str | None, campaign: str | None, note: str | None,
               dim: int) -> NewItem:
    """The bank row of a video: the columns of its driving frame (the model's score at
    video.VIDEO_SCORE_QUANTILE of its frames), so that image queries meet it through that frame, plus its
    duration, fps, every sampled frame (`frames`) and the frame hashes its segment indexes (`frame_pdq`)."""
    from dataclasses import replace

    records = vemb.records()
    i = vid.driving_index([e.p_fake for e in vemb.embeddings])
    base = new_item(vemb.embeddings[i], label, source, campaign, note)
    return replace(base, sha256=vemb.sha256, path=vemb.path, width=vemb.width, height=vemb.height, media=VIDEO,
                   duration_s=vemb.duration_s, fps=vemb.info.fps, frames=vid.pack_frames(records, dim),
                   frame_pdq=vid.index_codes(records) or None)


def _vpdq_dict(m: vid.VpdqMatch) -> dict:
    return {"query_match_percent": round(m.query_match_percent, 2),
            "compared_match_percent": round(m.compared_match_percent, 2)}


def _read_input(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e}); check the path") from e


def _scores(logits: np.ndarray, knn: list, params: FusionParams) -> np.ndarray:
    return np.array([fuse(float(lg), p, params) for lg, p in zip(logits, knn)])


def _metrics(scores: np.ndarray, y: np.ndarray, threshold: float) -> dict:
    return {"accuracy": round(float(((scores > threshold) == (y == 1)).mean()), 4),
            "average_precision": round(average_precision(scores, y), 4)}


def average_precision(scores: np.ndarray, y: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    hits = (y[order] == 1).astype(np.float64)
    if hits.sum() == 0:
        return 0.0
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision_at * hits).sum() / hits.sum())


def _same_rows(table, previous) -> bool:
    """Whether two campaign assignment tables hold the same (id, campaign, origin) rows."""
    if previous is None:
        return len(table) == 0
    if len(table) != len(previous):
        return False
    key = lambda t: sorted(zip(t.column("id").to_pylist(), t.column("campaign").to_pylist(),  # noqa: E731
                               t.column("origin").to_pylist()))
    return key(table) == key(previous)
