"""Load and fault run against a local `fakebank serve` (127.0.0.1 only; stops by itself).

Prints, for POST /v1/query at concurrency 1, 8 and 32: throughput and p50/p95/p99 latency; the same
with micro-batching off (--batch-size 1) for the batching gain; the extractor's own batch throughput
for comparison; and, with --fault-trials N, N kill -9/restart trials during concurrent uploads with the
count of acknowledged items lost (must be 0).

    python scripts/bench_service.py [--weights untrained:vit_small_patch16_384:0] [--fault-trials 20]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PER_TRIAL = 80  # uploads started per fault trial (4 concurrent clients)


def images(n: int, size: int = 640, seed: int = 0) -> list[bytes]:
    photos = [Image.open(p).convert("RGB").resize((1024, 1024)) for p in sorted((ROOT / "tests/data/commfor").glob("*.png"))]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x, y = rng.integers(0, 1024 - size, 2)
        buf = io.BytesIO()
        photos[i % len(photos)].crop((x, y, x + size, y + size)).save(buf, format="JPEG", quality=88)
        out.append(buf.getvalue())
    return out


class Server:
    def __init__(self, bank: Path, weights: str, *extra: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "fakebank", "serve", "--bank", str(bank), "--weights", weights,
                     "--port", str(self.port), "--create", *extra]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Server":
        self.proc = subprocess.Popen(self.args, env={**os.environ, "FAKEBANK_API_KEY": KEY},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


async def load(url: str, payloads: list[bytes], concurrency: int, requests: int) -> tuple[float, np.ndarray, int]:
    latencies, errors = [], 0
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=120, headers=AUTH) as client:
        async def one(i: int) -> None:
            nonlocal errors
            async with sem:
                t = time.perf_counter()
                r = await client.post(url + "/v1/query", files={"file": (f"q{i}.jpg", payloads[i % len(payloads)])})
                latencies.append(time.perf_counter() - t)
                errors += r.status_code >= 500 or r.status_code != 200
        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        elapsed = time.perf_counter() - start
    return requests / elapsed, np.array(latencies) * 1000, errors


def extractor_throughput(weights: str, batch: int) -> tuple[float, float]:
    from fakebank.embed import Extractor
    from fakebank.model import load_model

    ex = Extractor(load_model(weights), batch_size=batch)
    size = ex.model.preprocessing.input_size
    x = np.random.default_rng(0).normal(size=(batch * 4, 3, size, size)).astype(np.float32)
    ex.embed_pixels(x[:batch])
    t = time.perf_counter()
    for i in range(0, len(x), batch):
        ex.embed_pixels(x[i : i + batch])
    batched = len(x) / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(4):
        ex.embed_pixels(x[i : i + 1])
    single_ms = (time.perf_counter() - t) / 4 * 1000
    return batched, single_ms


def fault_trials(weights: str, trials: int, tmp: Path) -> None:
    bank = tmp / "fault-bank"
    acknowledged: dict[int, str] = {}
    payloads = images(trials * PER_TRIAL, size=256, seed=7)
    rng = np.random.default_rng(1)
    lost_total = 0
    for trial in range(trials):
        before = len(acknowledged)
        with Server(bank, weights) as srv:
            async def upload(chunk: list[bytes]) -> None:
                async with httpx.AsyncClient(timeout=30, headers=AUTH) as client:
                    for i, data in enumerate(chunk):
                        try:
                            r = await client.post(srv.url + "/v1/items", files={"file": (f"{trial}-{i}.jpg", data)})
                        except httpx.HTTPError:
                            return
                        if r.status_code == 200:
                            rec = r.json()["results"][0]
                            if rec["status"] == "added":
                                acknowledged[rec["id"]] = rec["sha256"]

            async def run() -> None:
                chunk = payloads[trial * PER_TRIAL : (trial + 1) * PER_TRIAL]
                tasks = [asyncio.create_task(upload(chunk[i::4])) for i in range(4)]
                await asyncio.sleep(float(rng.uniform(0.2, 1.5)))  # mid-upload
                srv.kill()
                await asyncio.gather(*tasks)

            asyncio.run(run())
        with Server(bank, weights) as srv:
            lost = sum(httpx.get(f"{srv.url}/v1/items/{i}", headers=AUTH).json().get("sha256") != sha
                       for i, sha in acknowledged.items())
            lost_total += lost
        print(f"  trial {trial + 1:2d}: {len(acknowledged):4d} acknowledged so far "
              f"({len(acknowledged) - before} of {PER_TRIAL} this trial before the kill), lost {lost}", flush=True)
    print(f"fault run: {trials} kill -9/restart trials, {len(acknowledged)} acknowledged items, {lost_total} lost")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="untrained:vit_small_patch16_384:0")
    ap.add_argument("--requests", type=int, default=48, help="requests per concurrency level (×2 at 32)")
    ap.add_argument("--fault-trials", type=int, default=0)
    ap.add_argument("--fault-weights", default="untrained:test_vit:0")
    ap.add_argument("--skip-load", action="store_true", help="only the fault trials")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.skip_load:
            fault_trials(args.fault_weights, args.fault_trials, tmp)
            return
        payloads = images(16)
        batched, single_ms = extractor_throughput(args.weights, 8)
        print(f"extractor: {batched:.2f} img/s at batch 8; one image alone {single_ms:.0f} ms ({args.weights})")
        results = {}
        for label, extra in (("batched", []), ("unbatched", ["--batch-size", "1"])):
            with Server(tmp / f"bank-{label}", args.weights, *extra) as srv:
                seed = images(8, seed=3)
                httpx.post(srv.url + "/v1/items", headers=AUTH, timeout=300,
                           files=[("file", (f"seed{i}.jpg", d)) for i, d in enumerate(seed)])
                asyncio.run(load(srv.url, payloads, 2, 4))  # warm-up
                for c in (1, 8, 32):
                    n = max(8, args.requests // 3) if c == 1 else args.requests * (2 if c == 32 else 1)
                    rps, lat, errors = asyncio.run(load(srv.url, payloads, c, n))
                    results[(label, c)] = rps
                    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
                    print(f"{label:9} c={c:2d}: {rps:6.2f} req/s  p50 {p50:7.0f} ms  p95 {p95:7.0f} ms  "
                          f"p99 {p99:7.0f} ms  errors {errors}  ({n} requests)", flush=True)
        print(f"service c=8 / extractor batch throughput = {results[('batched', 8)] / batched:.2f} (target ≥ 0.8)")
        for c in (8, 32):
            print(f"batching gain at c={c}: ×{results[('batched', c)] / results[('unbatched', c)]:.2f}")
        if args.fault_trials:
            fault_trials(args.fault_weights, args.fault_trials, tmp)


if __name__ == "__main__":
    main()
