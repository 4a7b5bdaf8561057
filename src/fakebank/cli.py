"""The `fakebank` command line (DESIGN §2): parse → api → print.

JSON Lines on stdout with --json (field names are a contract); progress and human text on stderr.
Exit codes: 0 success, 1 some inputs failed (the rest were done), 2 usage error. Errors become exit
codes in `main` only.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from fakebank.api import DEFAULT_K, Fakebank, expand_inputs
from fakebank.dedup import DedupParams
from fakebank.errors import EXIT_SOME_FAILED, BankError, FakebankError, UsageError
from fakebank.outputs import check_output_file, writing
from fakebank.preprocess import DEFAULT_MAX_PIXELS
from fakebank.video import DEFAULT_MAX_FRAMES, STRATEGIES, write_vpdq

app = typer.Typer(
    name="fakebank",
    help="A bank of known AI-generated images: have we seen this before, is it fake, which campaign?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts say "[env FAKEBANK_BANK; default …]": brackets are text, not markup
)
# No markup on either console: paths, notes, sources and campaign names are user text, and a file named
# `x[bold]y.jpg` or `a[/]b.jpg` must print as it is (markup would drop the first and crash on the second).
# The few styled words are rich Text with a style (`_styled`), never markup built from strings.
err = Console(stderr=True, markup=False)
out = Console(highlight=False, soft_wrap=True, markup=False)

BankOpt = Annotated[Optional[Path], typer.Option("--bank", help="Bank folder [env FAKEBANK_BANK; default indexes/default].")]
WeightsOpt = Annotated[Optional[str], typer.Option(
    "--weights", help="Folder, .safetensors file, hf:OWNER/NAME[@REV] or untrained:ARCH[:SEED] "
    "[default: the bank's model, else env FAKEBANK_WEIGHTS, else hf:OwensLab/commfor-model-384].")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda")]
PrecisionOpt = Annotated[str, typer.Option(
    "--precision", help="auto | fp32 | bf16 | fp16 (auto: bf16 on CUDA and on CPUs with native bf16, else fp32).")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Images per forward pass [default 8 on CPU, from free GPU memory on CUDA].")]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON Lines on stdout (a stable contract).")]
MaxFramesOpt = Annotated[int, typer.Option(
    "--max-frames", min=1, help="Videos: frames sampled at most (≈ 1 a second; a longer video is sampled "
    "more sparsely over its whole length).")]
MaxPixelsOpt = Annotated[int, typer.Option(
    "--max-pixels", min=1, help="Decoded pixels an image may have (a decompression-bomb guard; raise it for "
    "trusted large scans and panoramas).")]
PositiveOpt = Annotated[Optional[str], typer.Option(
    "--positive-label", help="Which checkpoint label is the fake/positive class, when it cannot be told.")]


NO_INPUTS = "no images or videos found (folders are searched for image and video files; use -r for sub-folders)"


def _command(fn=None, *, name: str | None = None):
    """Register a command whose FakebankErrors become a message on stderr and their exit code (`name`: when
    the command's name is not its function's, e.g. a Python keyword)."""
    if fn is None:
        return functools.partial(_command, name=name)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FakebankError as e:
            err.print("error: " + str(e), highlight=False, markup=False)
            raise typer.Exit(e.exit_code) from None

    return app.command(name)(wrapper)


_store: dict[str, str | None] = {"spec": None}  # set by the app's callback (`fakebank --store SPEC COMMAND`)


@app.callback()
def _options(store: Annotated[Optional[str], typer.Option(
        "--store", envvar="FAKEBANK_STORE",
        help="Where the bank lives: folder (the default: --bank), milvus-lite:FILE or milvus-lite:FILE#NAME, "
             "milvus://HOST:PORT or milvus://HOST:PORT/NAME (token in env FAKEBANK_MILVUS_TOKEN).")] = None) -> None:
    _store["spec"] = store


def _fb(bank, weights=None, device="auto", precision="auto", batch_size=None, positive_label=None,
        max_frames: int = DEFAULT_MAX_FRAMES, max_pixels: int = DEFAULT_MAX_PIXELS) -> Fakebank:
    if max_pixels > (Image.MAX_IMAGE_PIXELS or 0):  # the user raised the guard: Pillow's own must not refuse
        Image.MAX_IMAGE_PIXELS = max_pixels
    return Fakebank(bank, weights=weights, device=device, precision=precision, batch_size=batch_size,
                    positive_label=positive_label, max_frames=max_frames, max_pixels=max_pixels,
                    store=_store["spec"])


def _styled(word: str, style: str, rest: str) -> Text:
    """`word` in `style`, then `rest` as it is (user text in `rest` is never read as markup)."""
    return Text.assemble((word, style), rest)


def _num(value, spec: str = "") -> str:
    """A record's number for reading; "—" where the record has none (a hash-only item has no similarity,
    an unusable hash no PDQ distance)."""
    return "—" if value is None else format(value, spec)


def _path(path) -> str:
    """A record's path for reading; a hash-only item (a shared PDQ hash) has none."""
    return "hash-only item" if path is None else str(path)


def _emit(record: dict, as_json: bool, human) -> None:
    if as_json:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()
    else:
        human(record)


@contextmanager
def _progress(total: int, what: str, as_json: bool):
    """A rich progress bar on stderr; silent with --json or when stderr is not a terminal."""
    if as_json or not err.is_terminal or total <= 1:
        yield lambda: None
        return
    with Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda: bar.advance(task)


def _warn_untrained(fb: Fakebank) -> None:
    if not fb.model_info["trained"]:
        err.print(_styled("warning:", "yellow", f" {fb.model_info['name']} has random weights: p_fake and verdicts "
                          "are meaningless, but matching against the bank is real. Set FAKEBANK_WEIGHTS for real "
                          "scores."))


@_command
def add(
    paths: Annotated[list[str], typer.Argument(help="Image or video files and/or folders.")],
    recursive: Annotated[bool, typer.Option("-r", "--recursive", help="Descend into sub-folders.")] = False,
    label: Annotated[str, typer.Option("--label", help="fake | real | unknown")] = "fake",
    source: Annotated[Optional[str], typer.Option("--source", help="Where these came from.")] = None,
    campaign: Annotated[Optional[str], typer.Option("--campaign", help="Known campaign name (ground truth).")] = None,
    note: Annotated[Optional[str], typer.Option("--note", help="Free text kept with each added item.")] = None,
    bank: BankOpt = None, weights: WeightsOpt = None, device: DeviceOpt = "auto", precision: PrecisionOpt = "auto",
    batch_size: BatchOpt = None, positive_label: PositiveOpt = None, as_json: JsonOpt = False,
    max_frames: MaxFramesOpt = DEFAULT_MAX_FRAMES, max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    ray: Annotated[Optional[str], typer.Option(
        "--ray", help="Extract on a Ray cluster: local (start one here), auto, or ray://HEAD:10001. PATHS may then "
        "also be listings (.txt, a path or URI a line) and URIs (s3://…); images only.")] = None,
    ray_workers: Annotated[Optional[int], typer.Option(
        "--ray-workers", min=1, help="Extraction actors (with --ray) [default: 2].")] = None,
    ray_gpus: Annotated[float, typer.Option("--ray-gpus", min=0, help="GPUs per actor (with --ray).")] = 0,
) -> None:
    """Embed images and videos and add them to the bank (resumable: what is already there is skipped)."""
    if ray:
        from fakebank.raydata import check_installed

        check_installed()
    elif ray_workers is not None or ray_gpus:
        raise UsageError("--ray-workers and --ray-gpus need --ray (extraction on a Ray cluster)")
    fb = _fb(bank, weights, device, precision, batch_size, positive_label, max_frames, max_pixels)
    files = list(paths) if ray else expand_inputs(paths, recursive)
    if not files:
        raise typer.BadParameter(NO_INPUTS)
    _warn_untrained(fb)
    counts = {"added": 0, "duplicate": 0, "error": 0}

    def human(r: dict) -> None:
        if r["status"] == "error":
            err.print("error " + r['error'], markup=False, highlight=False)
        elif r["status"] == "duplicate":
            kept = r["label"] if r["label"] not in (None, label) else None  # --label is not applied to it
            # nor --campaign: the item keeps its own
            wanted = (campaign or "").strip()  # as add stores it
            moved = wanted if wanted and fb.snapshot().value(r["id"], "campaign") != wanted else None
            out.print(f"duplicate  id={r['id']}  {r['path']}"
                      + (f"  (stays {kept}: `fakebank label {r['id']} --label {label}` changes it)" if kept else "")
                      + (f"  (--campaign not applied: `fakebank label {r['id']} --campaign {shlex.quote(moved)}` sets it)"
                         if moved else ""), markup=False)
        else:
            out.print(f"added      id={r['id']}  p_fake={r['p_fake']:.3f}  {r['path']}" + (
                f"  (video: {_count(r['frames']['count'], 'frame')})" if r.get("media") == "video" else ""))

    try:
        with _progress(len(files), "adding", as_json) as tick:
            records = fb.add_ray(files, address=ray, workers=ray_workers or 2, gpus=ray_gpus, recursive=recursive,
                                 label=label, source=source, campaign=campaign, note=note) if ray else \
                fb.add(files, label=label, source=source, campaign=campaign, note=note)
            for r in records:
                counts[r["status"]] += 1
                _emit(r, as_json, human)
                tick()
    except KeyboardInterrupt:
        # every record printed is committed; what was embedded since the last commit is not
        err.print(f"interrupted: {counts['added']} added and committed, {counts['duplicate']} already in the bank; "
                  "run the same command again to resume (what is in the bank is skipped)")
        raise typer.Exit(130) from None
    err.print(f"{counts['added']} added, {counts['duplicate']} already in the bank, {counts['error']} failed "
              f"→ {fb.store.location}" + ("" if fb.store.exists() else " (nothing went in: no bank was made)"))
    if counts["error"]:
        raise typer.Exit(EXIT_SOME_FAILED)


@_command
def query(
    paths: Annotated[list[Path], typer.Argument(help="Image or video files and/or folders.")],
    k: Annotated[int, typer.Option("-k", min=1, help="Neighbours to look up.")] = DEFAULT_K,
    recursive: Annotated[bool, typer.Option("-r", "--recursive", help="Descend into sub-folders.")] = False,
    explain: Annotated[bool, typer.Option(
        "--explain", help='Add a patch heat map ("heatmap"): one extra forward + backward pass per image.')] = False,
    provenance: Annotated[bool, typer.Option(
        "--provenance", help='Read C2PA/IPTC/generator metadata ("provenance"); an AI claim can then decide '
        'an uncertain verdict (reason "provenance").')] = False,
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out-dir", help="With --explain: write each heat-map overlay PNG into this folder.")] = None,
    bank: BankOpt = None, weights: WeightsOpt = None, device: DeviceOpt = "auto", precision: PrecisionOpt = "auto",
    batch_size: BatchOpt = None, positive_label: PositiveOpt = None, as_json: JsonOpt = False,
    max_frames: MaxFramesOpt = DEFAULT_MAX_FRAMES, max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
) -> None:
    """Verdicts for images and videos: known copy? what do the model and the nearest known items say?"""
    fb = _fb(bank, weights, device, precision, batch_size, positive_label, max_frames, max_pixels)
    files = expand_inputs(paths, recursive)
    if not files:
        raise typer.BadParameter(NO_INPUTS)
    if out_dir is not None and not explain:
        raise typer.BadParameter("--out-dir holds heat-map overlays: add --explain")
    fb.open_bank()  # a missing bank is the first thing to report, before loading any model
    _warn_untrained(fb)
    failed = 0

    def human(r: dict) -> None:
        if r.get("error"):
            err.print("error " + r['error'], markup=False, highlight=False)
            return
        colour = {"fake": "red", "real": "green"}.get(r["verdict"], "yellow")
        rest = (f" score={r['score']:.3f} p_model={r['p_model']:.3f} p_knn={_num(r['p_knn'], '.3f')} "
                f"({r['reason']})  {r['path']}")
        if r["match"]:
            m = r["match"]
            rest += (f"\n           ↳ copy of #{m['id']} ({m['label']}) {_path(m['path'])} "
                     f"(similarity {_num(m['similarity'], '.3f')}, pdq distance {_num(m['pdq_distance'])})"
                     + (f" campaign {m['campaign']}" if m.get("campaign") else "")
                     + (f"; labelled the other way: #{', #'.join(map(str, m['disputed_by']))}"
                        if m.get("disputed_by") else ""))
        out.print(_styled(f"{r['verdict']:9}", colour, rest))
        _print_video(r)
        _print_evidence(r)

    with _progress(len(files), "querying", as_json) as tick:
        for r in fb.query(files, k=k, explain=explain, provenance=provenance, out_dir=out_dir):
            failed += bool(r.get("error"))
            _emit(r, as_json, human)
            tick()
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def _print_video(r: dict) -> None:
    """The human lines of a video's `frames` summary (query and dupes)."""
    f = r.get("frames")
    if f is None:
        return
    out.print(f"           ↳ video: {_count(f['count'], 'frame')} over {f['duration_s']} s ({f['strategy']}, {f['decoded']} "
              f"decoded{'' if f['complete'] else ', incomplete: ' + str(f['note'])})", markup=False)
    if f.get("driving"):
        out.print(f"           ↳ verdict from the frame at {f['driving']['timestamp']} s", markup=False)
    for v in f.get("videos", []):
        out.print(f"           ↳ vPDQ match #{v['id']} ({v['label']}) {_path(v['path'])}: "
                  f"{v['query_match_percent']}% of this video's frames are in it, {v['compared_match_percent']}% of its "
                  "frames in this video", markup=False)
    for i in f.get("items", []):
        out.print(f"           ↳ #{i['id']} ({i['label']}) {_path(i['path'])} seen at "
                  f"{', '.join(map(str, i['timestamps']))} s ({i['signal']})", markup=False)


def _print_evidence(r: dict) -> None:
    """The human lines for `query --provenance/--explain` (the JSON carries the full records)."""
    p = r.get("provenance")
    if p is not None:
        if not p["evidence"]:
            out.print("           ↳ provenance: no metadata (which is not evidence either way)", markup=False)
        for e in p["evidence"]:
            out.print(f"           ↳ provenance{' [AI claim]' if e['ai'] else ''}: {e['detail']}", markup=False)
    h = r.get("heatmap")
    if h is not None:
        grid = h["grid"]
        hot = sum(v >= 0.5 for row in grid for v in row)
        where = f" → {h['overlay']}" if h.get("overlay") else ""
        out.print(f"           ↳ heat map {h['grid_size'][0]}×{h['grid_size'][1]}, {hot} patches ≥ 0.5{where}",
                  markup=False)


@_command
def explain(
    path: Annotated[Path, typer.Argument(help="One image file.")],
    out_png: Annotated[Optional[Path], typer.Option("--out", help="Write the heat-map overlay PNG here.")] = None,
    deletion: Annotated[bool, typer.Option(
        "--deletion/--no-deletion", help="Run the deletion test that checks the map on this image "
        "(6 more forward passes, batched).")] = True,
    bank: BankOpt = None, weights: WeightsOpt = None, device: DeviceOpt = "auto",
    positive_label: PositiveOpt = None, as_json: JsonOpt = False, max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
) -> None:
    """Where in the picture the model's fake logit comes from: a per-patch heat map drawn over the image."""
    fb = _fb(bank, weights, device, "fp32", None, positive_label, max_pixels=max_pixels)
    _warn_untrained(fb)
    r = fb.explain(path, out=out_png, deletion=deletion)
    if as_json:
        _emit(r, True, None)
        return
    h = r["heatmap"]
    out.print(f"p_model={r['p_model']:.3f}  heat map {h['grid_size'][0]}×{h['grid_size'][1]} patches of "
              f"{h['patch_size']} px ({h['method']})  {r['path']}", markup=False)
    if r["deletion"]:
        d = r["deletion"]
        out.print(f"deletion test: top {d['patches']} patches move the fake logit by {-d['top_drop']:+.4f}, "
                  f"random ones by {-d['random_drop']:+.4f} (mean of {len(d['random_drops'])}); "
                  f"margin {d['margin']:+.4f} ({'faithful' if d['margin'] > 0 else 'NOT faithful'} on this image)",
                  markup=False)
    if h.get("overlay"):
        err.print(f"overlay → {h['overlay']}", markup=False, highlight=False)


@_command
def info(bank: BankOpt = None, as_json: JsonOpt = False) -> None:
    """What is in the bank, and which model built it."""
    r = _fb(bank).info()
    if as_json:
        _emit(r, True, None)
        return
    m = r["model"]
    out.print(f"bank        {r['bank']}  (format {r['format_version']}, {r['bytes_on_disk'] / 1e6:.1f} MB)")
    out.print(f"items       {r['items']}  " + "  ".join(f"{k}={v}" for k, v in r["labels"].items())
              + (f"  (hash-only: {r['hash_only']})" if r.get("hash_only") else ""))
    out.print(f"model       {m['name']} rev={m['revision']} arch={m['arch']} trained={m['trained']} "
              f"identity={str(m['identity_hash'])[:12]}")
    out.print("indexes     " + ", ".join(f"{k}: {v}" for k, v in r["indexes"].items()))
    f = r["fusion"]
    out.print(f"fusion      w_model={f['w_model']:.3f} w_knn={f['w_knn']:.3f} bias={f['bias']:.3f} "
              f"min_sim={f['min_similarity']} ({f['source']})")
    d = r["dedup"]  # the copy decision's settings, as `dupes --save` stores them
    out.print(f"dedup       {DedupParams.from_dict(d).describe()} ({d['source']})")
    out.print(f"updated     {r['updated_at']}")
    st = r.get("storage")
    if st and "segments" in st:
        out.print(f"storage     {st['segments']} segments (largest {st['largest_segment']}), {st['delta_files']} delta files")
    elif st:
        out.print(f"storage     Milvus {st['uri']} collections {st['collection']}_*: {st['rows']}")


def _item_ids(given: list[str]) -> list[int]:
    bad = [g for g in given if not g.strip().isdigit()]
    if bad:
        raise UsageError(f"item ids are whole numbers ≥ 0 (see query/add output), not {', '.join(map(repr, bad[:5]))}")
    return [int(g) for g in given]


@_command
def label(
    ids: Annotated[list[str], typer.Argument(help="Item ids (see query/add output).")],
    new_label: Annotated[Optional[str], typer.Option("--label", help="fake | real | unknown")] = None,
    campaign: Annotated[Optional[str], typer.Option(
        "--campaign", help="Put the items in this analyst campaign ('' takes them out); `campaigns` treats "
        "it as ground truth from its next run.")] = None,
    bank: BankOpt = None, as_json: JsonOpt = False,
) -> None:
    """Change items' labels and/or analyst campaign (an analyst override; takes effect on the next query)."""
    from fakebank.api import KEEP

    for r in _fb(bank).label(_item_ids(ids), new_label, campaign=KEEP if campaign is None else campaign):
        _emit(r, as_json, lambda r: out.print(f"#{r['id']} → {r['label']}"
                                              + (f", campaign {r['campaign']}" if campaign is not None and r["campaign"]
                                                 else ", no analyst campaign" if campaign is not None else ""),
                                              markup=False))


@_command
def remove(
    ids: Annotated[list[str], typer.Argument(help="Item ids.")],
    bank: BankOpt = None, as_json: JsonOpt = False,
) -> None:
    """Remove items from the bank."""
    for r in _fb(bank).remove(_item_ids(ids)):
        _emit(r, as_json, lambda r: out.print(f"#{r['id']} removed"))


@_command
def compact(bank: BankOpt = None, as_json: JsonOpt = False) -> None:
    """Merge the bank's segments and fold relabels and removals in (never needed for correctness)."""
    r = _fb(bank).compact()
    _emit(r, as_json, lambda r: out.print(
        f"{r['bank']}: {r['segments_before']} → {r['segments_after']} segments, "
        f"{r['delta_files_before']} → {r['delta_files_after']} delta files, {r['items']} items"
        if r["segments_before"] is not None else f"{r['bank']}: {r['compaction']}, {r['items']} items"))


FormatOpt = Annotated[Optional[str], typer.Option(
    "--format", help="local_file | csv | fakebank (import: detected from the file when not given).")]


@_command(name="import")
def import_(
    file: Annotated[Path, typer.Argument(help="A hash list: pytx local_file lines, pytx dataset CSV, or a "
                                               "fakebank Parquet export.")],
    fmt: FormatOpt = None,
    signal_type: Annotated[Optional[str], typer.Option(
        "--signal-type", help="The type of every line of a local_file list of bare hashes (pdq).")] = None,
    label: Annotated[str, typer.Option("--label", help="Label of signals whose list carries none.")] = "fake",
    source: Annotated[Optional[str], typer.Option(
        "--source", help="Source of signals whose list names none (a CSV's collab column wins).")] = None,
    bank: BankOpt = None, weights: WeightsOpt = None, as_json: JsonOpt = False,
) -> None:
    """Import a shared hash list as hash-only items (one commit; re-importing updates, never duplicates)."""
    r = _fb(bank, weights).import_list(file, fmt=fmt, signal_type=signal_type, label=label, source=source)
    if as_json:
        _emit(r, True, None)
    else:
        for e in r["errors"]:
            err.print(f"{r['path']}:{e['line']}: {e['error']}", markup=False, highlight=False)
        if r["error_count"] > len(r["errors"]):
            err.print(f"… and {r['error_count'] - len(r['errors'])} more bad lines", markup=False)
        if r["note"]:
            err.print(_styled("note:", "yellow", " " + r["note"]))
        out.print(f"{r['path']} ({r['format']}): {_count(r['signals'], 'signal')} → {r['added']} added, {r['updated']} updated, "
                  f"{r['unchanged']} unchanged, "
                  + (f"{r['repeated_in_list']} repeated in the list (the last one counts), "
                     if r.get("repeated_in_list") else "")
                  + f"{r['error_count']} bad lines skipped")
    if r["error_count"]:
        raise typer.Exit(EXIT_SOME_FAILED)


@_command
def export(
    file: Annotated[Path, typer.Argument(help="Where to write the list.")],
    fmt: Annotated[str, typer.Option("--format", help="local_file | csv | fakebank | vpdq (a folder: one "
                                     "vPDQ file per banked video)")] = "local_file",
    labels: Annotated[list[str], typer.Option("--label", metavar="LABEL", help="Labels to export (repeat).")] = ["fake"],
    source: Annotated[Optional[str], typer.Option("--source", help="Only items from this source.")] = None,
    campaign: Annotated[Optional[str], typer.Option("--campaign", help="Only items of this campaign.")] = None,
    min_quality: Annotated[Optional[int], typer.Option(
        "--min-quality", min=0, max=100, metavar="Q",
        help="Leave out items whose PDQ quality is below Q [default: 50; 0 for --format fakebank].")] = None,
    bank: BankOpt = None, as_json: JsonOpt = False,
) -> None:
    """Write the bank's items (its fakes by default) as a hash list a partner can import."""
    r = _fb(bank).export_list(file, fmt=fmt, labels=labels, source=source, campaign=campaign, min_quality=min_quality)
    _emit(r, as_json, lambda r: out.print(
        f"{_count(r['signals'], 'signal')} → {r['path']} ({r['format']})"
        + (f"; {r['below_min_quality']} items left out below --min-quality {r['min_quality']}"
           if r.get("below_min_quality") else "")))


@_command
def lookup(
    pdq: Annotated[list[str], typer.Option("--pdq", help="A PDQ hash, 64 hex digits (repeat for several).")],
    max_distance: Annotated[int, typer.Option("--max-distance", min=0, max=64,
                                              help="Largest Hamming distance that matches.")] = 31,
    bank: BankOpt = None, as_json: JsonOpt = False,
) -> None:
    """Is this hash known? The bank's items within --max-distance bits of each PDQ hash (no model needed)."""

    def human(r: dict) -> None:
        if not r["matches"]:
            out.print(f"{r['pdq']}  no match")
        for m in r["matches"]:
            out.print(f"{r['pdq'][:16]}…  #{m['id']}  distance={m['distance']}  {m['label']}  "
                      f"source={m['source'] or '—'}  campaign={m['campaign'] or '—'}  ({m['media']})")

    for r in _fb(bank).lookup(pdq, max_distance=max_distance):
        _emit(r, as_json, human)


@_command
def sync(
    config: Annotated[Path, typer.Argument(help='JSON: {"collaborations": [{"name", "api", "label"?, …}]} '
                                                 "(see the README's 'Sharing hash lists').")],
    bank: BankOpt = None, weights: WeightsOpt = None, as_json: JsonOpt = False,
) -> None:
    """Pull signals from hash-sharing exchanges (python-threatexchange's exchanges), resuming from the last run."""
    failed = 0
    for r in _fb(bank, weights).sync(config):
        failed += r["error_count"]
        _emit(r, as_json, lambda r: out.print(
            f"{r['collaboration']} ({r['api']}): {_count(r['signals'], 'signal')} → {r['added']} added, {r['updated']} updated, "
            f"{r['removed']} removed, {r['unchanged']} unchanged, {r['error_count']} unusable"))
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)


@_command
def thumbnails(bank: BankOpt = None, as_json: JsonOpt = False) -> None:
    """Store a thumbnail for every item that has none (banks from before thumbnails), from its original file.

    Items whose file moved or changed since `add` are listed as errors (exit 1); rerun after restoring them.
    """
    fb = _fb(bank)
    counts = {"added": 0, "error": 0}

    def human(r: dict) -> None:
        if r["status"] == "error":
            err.print(f"error #{r['id']}: {r['error']}", markup=False, highlight=False)

    for r in fb.make_thumbnails():
        counts[r["status"]] += 1
        _emit(r, as_json, human)
    err.print(f"{counts['added']} thumbnails stored, {counts['error']} items without a readable original"
              + ("" if counts["added"] + counts["error"] else
                 " (nothing to do: every image and video has one; hash-only items carry no picture)"),
              markup=False, highlight=False)
    if counts["error"]:
        raise typer.Exit(EXIT_SOME_FAILED)


@_command
def calibrate(
    folder: Annotated[Path, typer.Argument(help="Folder with fake/ and real/ sub-folders of labelled images.")],
    k: Annotated[int, typer.Option("-k", min=1, help="Neighbours that vote for each image.")] = DEFAULT_K,
    force: Annotated[bool, typer.Option("--force", help="Store the fit even when it has a problem (a weight "
                                        "≤ 0, or worse scores than the weights in use).")] = False,
    bank: BankOpt = None, weights: WeightsOpt = None, device: DeviceOpt = "auto", precision: PrecisionOpt = "auto",
    batch_size: BatchOpt = None, positive_label: PositiveOpt = None, as_json: JsonOpt = False,
) -> None:
    """Fit the model/neighbour fusion weights on labelled images and store them in the bank."""
    fb = _fb(bank, weights, device, precision, batch_size, positive_label)
    _warn_untrained(fb)
    r = fb.calibrate(folder, k=k, force=force)
    if as_json:
        _emit(r, True, None)
    else:
        out.print(f"{r['images']} images ({r['fake']} fake, {r['real']} real), {len(r['failed'])} failed"
                  + (f", {len(r['skipped_videos'])} videos skipped (the fit is on images)" if r["skipped_videos"] else ""),
                  markup=False)
        for when in ("before", "after"):
            out.print(f"{when:7} accuracy={r[when]['accuracy']:.4f}  AP={r[when]['average_precision']:.4f}")
        f = r["fusion"]
        out.print(f"{'stored' if r['stored'] else 'fitted'}  w_model={f['w_model']:.3f} w_knn={f['w_knn']:.3f} "
                  f"bias={f['bias']:.3f}")
    for w in r["warnings"]:
        err.print(f"warning: {w}", markup=False)
    for p in r["problems"]:
        err.print(f"{'stored anyway' if r['stored'] else 'not stored'}: {p}", markup=False)
    if not r["stored"]:
        err.print("the bank keeps its fusion weights; fix the labelled images or the model, or pass --force",
                  markup=False)
        raise typer.Exit(EXIT_SOME_FAILED)


@_command
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on (beyond loopback needs FAKEBANK_API_KEY).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port to listen on.")] = 8080,
    max_upload_mb: Annotated[int, typer.Option("--max-upload-mb", min=1, help="Per-file upload bound.")] = 20,
    max_pixels: Annotated[int, typer.Option("--max-pixels", min=1, help="Decoded pixels per image.")] = 50_000_000,
    max_upload_mb_video: Annotated[int, typer.Option(
        "--max-upload-mb-video", min=1, help="Per-file upload bound for videos.")] = 200,
    max_frames: MaxFramesOpt = DEFAULT_MAX_FRAMES,
    bank: BankOpt = None, weights: WeightsOpt = None, device: DeviceOpt = "auto", precision: PrecisionOpt = "auto",
    batch_size: BatchOpt = None, positive_label: PositiveOpt = None,
    create: Annotated[bool, typer.Option(
        "--create", help="Start a new, empty bank when there is none at --bank (without it a typo'd --bank "
                         "is refused, not served empty).")] = False,
) -> None:
    """Serve the bank over HTTP (FastAPI; OpenAPI docs at /docs)."""
    from fakebank.service import API_KEY_ENV, ServiceConfig, check_bind, check_port
    from fakebank.service import serve as run_server

    api_key = os.environ.get(API_KEY_ENV) or None
    check_bind(host, api_key)
    check_port(host, port)
    fb = _fb(bank, weights, device, precision, batch_size, positive_label, max_frames)
    if not create and not fb.store.exists():
        raise BankError(f"no bank at {fb.store.location}; pick the bank to serve (--bank, or --store for "
                        "Milvus), or pass --create to start an empty one")
    _warn_untrained(fb)
    if not api_key:
        err.print(f"no {API_KEY_ENV} set: the API is open to anyone who can reach {host}")
    err.print(f"fakebank serving {fb.store.location} with {fb.model_info['name']} on http://{host}:{port} (docs: /docs)")
    config = ServiceConfig(api_key=api_key, max_upload_bytes=max_upload_mb * 1024 * 1024, max_pixels=max_pixels,
                           max_batch=fb.extractor.batch_size, max_video_upload_bytes=max_upload_mb_video * 1024 * 1024)
    run_server(fb, host, port, config)


@_command
def campaigns(
    min_size: Annotated[int, typer.Option("--min-size", min=1, help="Smallest campaign to list.")] = 2,
    report: Annotated[Optional[Path], typer.Option(
        "--report", help="Also write a self-contained HTML page (thumbnails embedded) to this file.")] = None,
    similarity: Annotated[Optional[float], typer.Option(
        "--similarity", min=0.0, max=1.0,
        help="Mean cls/patch cosine that links two items [default 0.99, measured with untrained weights].")] = None,
    min_p_fake: Annotated[Optional[float], typer.Option(
        "--min-p-fake", min=0.0, max=1.0,
        help="Also cluster `unknown` items the model scores at least this (default: label fake only).")] = None,
    local: Annotated[Optional[bool], typer.Option(
        "--local/--no-local",
        help="Link items whose ORB keypoints match (crops, captions, re-framings); a few ms per flagged item. "
             "Default: on up to 10,000 flagged items.")] = None,
    embedding_attach: Annotated[bool, typer.Option(
        "--embedding-attach",
        help="Let an item that no PDQ or local-feature match links join a group of such copies by close "
             "embeddings alone: finds more heavily edited copies, but look-alikes (star fields, one app's "
             "screens) join other images' campaigns too.")] = False,
    stored: Annotated[bool, typer.Option(
        "--stored", help="List the campaigns stored by the last run, without clustering again.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Cluster but do not store the assignments.")] = False,
    bank: BankOpt = None, as_json: JsonOpt = False,
) -> None:
    """Group flagged items into campaigns with stable ids (stored in the bank); report changes since last run."""
    if report is not None:  # before the clustering, not after it
        check_output_file(report, "--report", example="campaigns.html")
    fb = _fb(bank)
    snap, result = fb.campaign_run(similarity=similarity, min_p_fake=min_p_fake, local=local,
                                   embedding_attach=embedding_attach or None, recompute=not stored, save=not dry_run)
    records = fb.campaign_records(snap, result, min_size=min_size)
    from fakebank.campaigns import event_text

    for event in result.events:
        err.print(event_text(event), markup=False, highlight=False)

    def human(r: dict) -> None:
        out.print(f"{r['campaign']:<14} {r['size']:>5} items  {r['first_seen'][:10]} … {r['last_seen'][:10]}  "
                  f"p_fake={r['mean_p_fake']:.3f}  exemplar=#{r['exemplar']}  {', '.join(r['sources']) or '-'}",
                  markup=False)

    for r in records:
        _emit(r, as_json, human)
    s = result.stats
    err.print(f"{len(records)} campaign{'' if len(records) == 1 else 's'} of ≥ {min_size} items"
              + (f" from {s['selected']} flagged items ({s['edges']} edges"
                 + (f", {s['local_edges']} from local features" if s.get("local_edges") is not None else "")
                 + ")" if s else " (stored)")
              + (" — not stored (--dry-run)" if dry_run and not stored else ""), markup=False, highlight=False)
    if report is not None:
        path = fb.campaign_report(report, snap, result, records)
        err.print(f"report → {path}", markup=False, highlight=False)


@_command
def dupes(
    paths: Annotated[Optional[list[Path]], typer.Argument(
        help="Images to look up; none: groups of near-duplicates inside the bank.")] = None,
    recursive: Annotated[bool, typer.Option("-r", "--recursive", help="Descend into sub-folders.")] = False,
    threshold: Annotated[Optional[float], typer.Option(
        "--threshold", help="cls cosine at or above which two images are copies (the embedding signal) "
        "[default: the bank's, else 0.99].")] = None,
    pdq_threshold: Annotated[Optional[int], typer.Option(
        "--pdq-threshold", help="PDQ Hamming distance, inclusive [default: the bank's, else Meta's 31].")] = None,
    min_inliers: Annotated[Optional[int], typer.Option(
        "--min-inliers", help="RANSAC inliers a local-feature match needs [default: the bank's, else 24].")] = None,
    min_spread: Annotated[Optional[float], typer.Option(
        "--min-spread", min=0.0, max=1.0,
        help="Share of each image's frame the matching keypoints must span (0.1 refuses pictures that only "
             "share a line of caption text) [default: the bank's, else 0].")] = None,
    signals: Annotated[Optional[str], typer.Option(
        "--signals", help="Comma-separated subset of pdq,pdq_trim,local,embedding [default: all].")] = None,
    save: Annotated[bool, typer.Option(
        "--save", help="Store these thresholds in the bank's manifest: query's match and dupes use them.")] = False,
    bank: BankOpt = None, weights: WeightsOpt = None, device: DeviceOpt = "auto", precision: PrecisionOpt = "auto",
    batch_size: BatchOpt = None, as_json: JsonOpt = False, max_frames: MaxFramesOpt = DEFAULT_MAX_FRAMES,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
) -> None:
    """Near-duplicates: bank items that are copies of the given images or videos, or groups in the bank."""
    fb = _fb(bank, weights, device, precision, batch_size, max_frames=max_frames, max_pixels=max_pixels)
    b = fb.open_bank()  # a missing bank is the first thing to report, before loading any model
    try:
        params = fb.dedup_params(b, pdq_threshold=pdq_threshold, embedding_threshold=threshold,
                                 local_min_inliers=min_inliers, local_min_spread=min_spread,
                                 signals=tuple(x.strip() for x in signals.split(",")) if signals is not None else None)
    except FakebankError as e:
        raise typer.BadParameter(str(e)) from None
    if save:
        fb.save_dedup_params(params)
        err.print(f"thresholds stored in {fb.store.location}: {params.describe()}", markup=False)
    if not paths:
        with _progress(len(b), "grouping", as_json) as tick:
            n = 0
            for r in fb.dupe_groups(params=params, progress=tick):
                n += 1
                _emit(r, as_json, lambda r: out.print(f"group of {len(r['group'])}: " + ", ".join(
                    f"#{i} {_path(p)}" for i, p in zip(r["group"], r["paths"]))))
        err.print(f"{n} groups of near-duplicates among {len(b)} items")
        return
    files = expand_inputs(paths, recursive)
    if not files:
        raise typer.BadParameter(NO_INPUTS)
    failed = 0

    def human(r: dict) -> None:
        if r.get("error"):
            err.print("error " + r["error"], markup=False, highlight=False)
            return
        out.print(f"{len(r['duplicates'])} near-duplicates  {r['path']}")
        _print_video(r)
        for d in r["duplicates"]:
            out.print(f"    #{d['id']} {_path(d['path'])}  ({d['signal']}, similarity "
                      f"{_num(d['similarity'], '.3f')}, pdq distance {_num(d['pdq_distance'])})" + (
                          f" at {', '.join(map(str, d['timestamps']))} s" if d.get("timestamps") else ""))

    with _progress(len(files), "matching", as_json) as tick:
        for r in fb.dupes(files, params=params):
            failed += bool(r.get("error"))
            _emit(r, as_json, human)
            tick()
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)


@_command
def vpdq(
    video: Annotated[Path, typer.Argument(help="One video file.")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Write the hash lines here "
                                                   "[default: stdout].")] = None,
    strategy: Annotated[str, typer.Option(
        "--strategy", help=f"{' | '.join(STRATEGIES)}: which frames (exact: every int(fps)-th decoded frame, as "
        "Meta's vpdq-hash-video; auto: fakebank's own sampling).")] = "exact",
    max_frames: Annotated[int, typer.Option("--max-frames", min=1, help="Frames hashed at most.")] = 36_000,
    upright: Annotated[bool, typer.Option(
        "--upright", help="Apply the video's display rotation first (as fakebank's bank does; vpdq does not).")] = False,
) -> None:
    """A video's vPDQ hash: `frame_number,quality,pdq_hex,timestamp` lines, as Meta's vpdq writes them."""
    if output is not None:
        check_output_file(output, "--output", example="hashes.txt")
    fb = Fakebank(None, max_frames=max_frames)
    features = fb.vpdq(video, strategy=strategy, upright=upright)
    if output is None:
        write_vpdq(features, sys.stdout)
    else:
        with writing(output, "--output"):
            write_vpdq(features, output)
        err.print(f"{len(features)} frame hashes → {output}", markup=False, highlight=False)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def main() -> None:
    """Entry point for the console script and `python -m fakebank`."""
    app()
