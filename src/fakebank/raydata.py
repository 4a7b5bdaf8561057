"""Distributed extraction with Ray Data: `fakebank add --ray ADDRESS` embeds on a pool of actors (CPU or
GPU workers of a Ray cluster) and the driver writes through the store, as plain `add` does.

Sits beside embed (it runs the Extractor remotely) and under api, which writes the results; never imports
the CLI or the service. The pipeline, one stage:

    paths (local files or any pyarrow filesystem URI: s3://, gs://, hdfs:// …)
      → map_batches(_Embed, compute=ActorPoolStrategy(size=N), num_gpus=G, batch_size=B)
            each actor loads the model once, reads its files through pyarrow.fs, skips the sha256s the bank
            already holds (resuming) and yields embed.Embedding / Skipped / FailedInput, pickled
      → the driver, in input order: one writer (the folder's lock; ids allocated in one place)

The actors read the bank only to skip what it holds; a Milvus Lite file serves one process, so there the
driver alone skips (the workers then embed everything, and nothing is added twice). Ray ≥ 2.51's
`compute=ActorPoolStrategy` form of map_batches (the `concurrency=` one is deprecated).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from fakebank.errors import UsageError

LOCAL = "local"  # start a Ray on this machine (as many CPUs as it has) unless one is running in-process
LISTING_SUFFIXES = (".txt", ".lst")  # a file of paths/URIs, one a line


def inputs_of(paths: Sequence[str], recursive: bool, expand) -> list[str]:
    """Image paths and URIs: folders expanded (`expand`: api.expand_inputs), listings (.txt/.lst) read, URIs
    (scheme://…) kept as they are."""
    out: list[str] = []
    for p in map(str, paths):
        if "://" in p:
            out.append(p)
        elif p.endswith(LISTING_SUFFIXES) and os.path.isfile(p):
            with open(p, encoding="utf-8") as f:
                out.extend(line.strip() for line in f if line.strip() and not line.startswith("#"))
        else:
            out.extend(expand([p], recursive))
    return out


def read_bytes(path: str) -> bytes:
    """A file's bytes, local or through pyarrow's filesystems (any URI pyarrow knows)."""
    if "://" not in path:
        with open(path, "rb") as f:
            return f.read()
    import pyarrow.fs as pafs

    fs, inner = pafs.FileSystem.from_uri(path)
    with fs.open_input_stream(inner) as f:
        return f.read()


class _Embed:
    """A Ray actor: one model, many batches of paths."""

    def __init__(self, weights: str | None, device: str, precision: str, batch_size: int,
                 store: str | None, bank_path: str, skip_known: bool) -> None:
        from fakebank.embed import Extractor
        from fakebank.model import load_model

        self.extractor = Extractor(load_model(weights), device=device, precision=precision, batch_size=batch_size)
        self.bank = None
        if skip_known:
            from fakebank.store import open_store

            s = open_store(store, bank_path)
            self.bank = s.open() if s.exists() else None

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        from fakebank.embed import FailedInput, Source

        sources, out = [], {}
        for k, path in enumerate(batch["path"].tolist()):
            try:
                sources.append(Source(path, read_bytes(path)))
            except OSError as e:
                out[k] = FailedInput(path, f"{path}: cannot read ({getattr(e, 'strerror', None) or e}); check the path")
        skip = (lambda sha: self.bank.id_of_sha256(sha) is not None) if self.bank is not None else None
        results = iter(self.extractor.extract(sources, skip=skip, mirror=False, thumbnail=True))
        column = np.empty(len(batch["path"]), dtype=object)  # records carried pickled, one per path
        column[:] = [out[k] if k in out else next(results) for k in range(len(column))]
        return {"result": column}


NEEDS_RAY = "--ray needs Ray Data: pip install 'fakebank[ray]'"


def check_installed() -> None:
    """Before any model loads or any bank is made: --ray without Ray is a usage error."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise UsageError(NEEDS_RAY)


def extract(paths: Sequence[str], *, address: str, weights: str | None, device: str, precision: str,
            batch_size: int, workers: int, gpus: float, store: str | None, bank_path: str,
            skip_known: bool) -> Iterator:
    """embed.Embedding / Skipped / FailedInput per path, in input order, computed on a Ray cluster."""
    try:
        import numpy as np
        import ray
    except ImportError as e:
        raise UsageError(NEEDS_RAY) from e
    if workers < 1:
        raise UsageError(f"--ray-workers must be ≥ 1, not {workers}")
    if not ray.is_initialized():
        ray.init(address=None if address == LOCAL else address, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # ids in input order, as plain `add` gives them
    ctx.enable_progress_bars = False
    ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=max(1, min(len(paths), 4 * workers)))
    ds = ds.map_batches(
        _Embed, batch_format="numpy", batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=workers),
        num_gpus=gpus or None, num_cpus=1,
        fn_constructor_kwargs={"weights": weights, "device": device, "precision": precision,
                               "batch_size": batch_size, "store": store, "bank_path": bank_path,
                               "skip_known": skip_known})
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        yield from np.asarray(batch["result"]).tolist()
