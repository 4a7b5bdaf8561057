"""`make demo`: build indexes/demo from the bundled sample images, then query edited copies of them.

Offline. Uses real weights when FAKEBANK_WEIGHTS is set or the Hugging Face cache holds the authors'
release; otherwise a seeded untrained ViT-S/16-384, whose scores are meaningless but whose matching is real.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps
from rich.console import Console
from rich.table import Table

from fakebank.api import Fakebank
from fakebank.checkpoints import DEFAULT_WEIGHTS, WEIGHTS_ENV
from fakebank.errors import CheckpointError
from fakebank.model import load_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
BANK = ROOT / "indexes" / "demo"
UNTRAINED = "untrained:vit_small_patch16_384:0"
console = Console(width=None if Console().is_terminal else 120)


def pick_weights() -> str:
    spec = os.environ.get(WEIGHTS_ENV)
    if spec:
        return spec
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo never downloads
    try:
        load_model(DEFAULT_WEIGHTS)
        return DEFAULT_WEIGHTS
    except CheckpointError:
        console.print(
            "[bold yellow]No trained weights here[/] (set FAKEBANK_WEIGHTS to a folder, a .safetensors file or "
            f"an hf: spec in your cache). Using {UNTRAINED}: [bold]p_fake and verdicts from the model are "
            "meaningless[/], but embeddings, PDQ and matching against the bank are real.\n"
        )
        return UNTRAINED


def make_queries(folder: Path, fakes: list[Path], reals: list[Path], unseen: Path) -> list[tuple[Path, str]]:
    out = []

    def save(img: Image.Image, name: str, what: str, **kw) -> None:
        path = folder / name
        img.save(path, **kw)
        out.append((path, what))

    for i, src in enumerate(fakes[:2]):
        img = Image.open(src).convert("RGB")
        save(img, f"fake{i}_q40.jpg", f"{src.stem} JPEG q40", quality=40)
        save(img.resize((img.width // 3, img.height // 3)), f"fake{i}_small.png", f"{src.stem} resized 1/3")
        save(ImageOps.mirror(img), f"fake{i}_mirror.jpg", f"{src.stem} mirrored", quality=90)
        save(img.rotate(90, expand=True), f"fake{i}_rot90.webp", f"{src.stem} rot 90° WEBP")
    real = Image.open(reals[0]).convert("RGB")
    save(real, "real_q50.jpg", f"{reals[0].stem} (real) JPEG q50", quality=50)
    save(Image.open(unseen).convert("RGB"), "unseen.jpg", f"{unseen.stem} (not in bank)", quality=90)
    return out


def main() -> int:
    fakes = sorted((DATA / "commfor").glob("*.png"))
    photos = DATA / "pdq" / "reg-test-input"
    reals = [photos / "dih" / "bridge-1-original.jpg"] + [photos / "labelme-subset" / f"q{n}.jpg" for n in ("0122", "0291")]
    unseen = photos / "labelme-subset" / "q2821.jpg"
    if not fakes or not all(p.is_file() for p in [*reals, unseen]):
        console.print(f"[red]sample images missing under {DATA}[/]")
        return 2
    weights = pick_weights()
    shutil.rmtree(BANK, ignore_errors=True)
    fb = Fakebank(BANK, weights=weights)
    console.print(f"[bold]1. Building {BANK.relative_to(ROOT)}[/] with {weights}")
    console.print(f"   fakebank add tests/data/commfor --label fake --source commfor-samples --bank {BANK.relative_to(ROOT)}")
    t = time.perf_counter()
    added = list(fb.add([str(p) for p in fakes], label="fake", source="commfor-samples (DALL-E 2)"))
    added += list(fb.add([str(p) for p in reals], label="real", source="Meta PDQ test photos"))
    for r in added:
        console.print(f"   #{r['id']} {r['status']:9} {r['label']:5} p_fake={r['p_fake']:.3f}  {Path(r['path']).name}")
    console.print(f"   {len(added)} images in {time.perf_counter() - t:.1f} s\n")

    with tempfile.TemporaryDirectory() as tmp:
        queries = make_queries(Path(tmp), fakes, reals, unseen)
        console.print("[bold]2. Querying edited copies[/]  (fakebank query FILES --bank indexes/demo)")
        t = time.perf_counter()
        results = list(fb.query([str(p) for p, _ in queries], k=5))
        elapsed = time.perf_counter() - t
    table = Table(show_lines=False)
    for col in ("query", "verdict", "reason", "score", "p_model", "matched item", "similarity", "pdq dist"):
        table.add_column(col)
    what = {str(p): w for p, w in queries}
    for r in results:
        m = r["match"]
        colour = {"fake": "red", "real": "green"}.get(r["verdict"], "yellow")
        table.add_row(
            what[r["path"]], f"[{colour}]{r['verdict']}[/]", r["reason"], f"{r['score']:.3f}", f"{r['p_model']:.3f}",
            f"#{m['id']} {Path(m['path']).stem} ({m['label']})" if m else "-",
            f"{m['similarity']:.3f}" if m else "-", str(m["pdq_distance"]) if m else "-",
        )
    console.print(table)
    console.print(f"   {len(results)} queries in {elapsed:.1f} s.  Inspect the bank: fakebank info --bank indexes/demo")
    missed = [r for r, (_, w) in zip(results, queries) if "not in bank" not in w and r["match"] is None]
    if missed:
        console.print(f"[yellow]{len(missed)} edited copies were not matched[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
