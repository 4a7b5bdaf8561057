"""How tests/data/bank-v2 was made: with the code at commit 13f1544 on PYTHONPATH
(git worktree add /tmp/old 13f1544; PYTHONPATH=/tmp/old/src python tests/data/bank-v2/make_fixture.py OUT),
then the FAISS shards, sha tables and bank.lock deleted (tests/bankutil.format_2_bank rebuilds them) and
the absolute paths in expected.json cut to tests/data-relative ones."""
import json, shutil, sys
from pathlib import Path
from PIL import Image
import fakebank
from fakebank.api import Fakebank
print("writing with", fakebank.__file__)
DATA = Path(__file__).resolve().parents[1]
out = Path(sys.argv[1])
shutil.rmtree(out, ignore_errors=True)
(out / "queries").mkdir(parents=True)
commfor = sorted((DATA / "commfor").glob("*.png"))
bridge = DATA / "pdq/reg-test-input/dih/bridge-1-original.jpg"
square = DATA / "pdq/bridge-mods/square-512x512.jpg"
fb = Fakebank(out / "bank", weights="untrained:test_vit:0")
records = list(fb.add(commfor, label="fake", source="ops"))
records += list(fb.add([bridge], label="real", source="press"))
records += list(fb.add([square], label="fake", campaign="c1"))
ids = {Path(r["path"]).name: r["id"] for r in records}
fb.label([ids[commfor[3].name]], "real")
fb.remove([ids[commfor[4].name]])
# edited copies, saved beside the bank
def save(img, name, **kw):
    p = out / "queries" / name
    img.save(p, **kw)
    return p
c = [Image.open(p).convert("RGB") for p in commfor]
queries = [
    save(c[0].resize((c[0].width * 3 // 5, c[0].height * 3 // 5)), "c0-small-q50.jpg", quality=50),
    save(c[1].transpose(Image.Transpose.FLIP_LEFT_RIGHT), "c1-mirror.jpg", quality=85),
    save(c[2].crop((60, 60, c[2].width - 60, c[2].height - 60)), "c2-crop.jpg", quality=85),
    save(c[3], "c3-relabelled.jpg", quality=90),
    save(c[4], "c4-removed.jpg", quality=90),
    save(Image.open(bridge).convert("RGB").rotate(90, expand=True), "bridge-rot90.jpg", quality=85),
    save(Image.open(sorted((DATA / "pdq/reg-test-input/labelme-subset").glob("*.jpg"))[-1]).convert("RGB"), "unrelated.jpg", quality=85),
]
expected = {
    "ids": ids,
    "info": {k: fb.info()[k] for k in ("items", "labels")},
    "query": list(fb.query([str(q) for q in queries])),
    "dupes": list(fb.dupes([str(q) for q in queries])),
}
for q in expected["query"] + expected["dupes"]:
    q["path"] = Path(q["path"]).name
(out / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True, default=str))
print(json.dumps(expected["info"]), [ (Path(r["path"]).name, r["verdict"], (r["match"] or {}).get("signal")) for r in expected["query"]])
