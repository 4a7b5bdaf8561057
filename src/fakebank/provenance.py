"""Provenance metadata of an image file, read from its bytes before any pixel is decoded (DESIGN §1.7).

Beside the extractor in the flow (file bytes → **provenance** → decide, api); it imports neither torch nor
the bank. It reports what the file says about its own origin:

- **C2PA** manifests through c2pa-python's ``Reader``, with remote manifest fetching and OCSP off (it never
  touches the network): validation state (``Invalid`` / ``Valid`` / ``Trusted``; ``Trusted`` needs trust
  anchors: ``FAKEBANK_C2PA_TRUST_ANCHORS`` = a PEM file), signer, claim generator, and whether any
  manifest in the store (the active one or an ingredient's) has a ``c2pa.actions*`` action whose
  ``digitalSourceType`` is IPTC's ``trainedAlgorithmicMedia`` or ``compositeWithTrainedAlgorithmicMedia``;
- **IPTC** ``Iptc4xmpExt:DigitalSourceType`` in XMP (JPEG APP1, PNG ``iTXt XML:com.adobe.xmp``, WebP
  ``XMP `` chunk);
- **generator text chunks** that image generators write (AUTOMATIC1111/Forge ``parameters``, ComfyUI
  ``prompt``/``workflow``, NovelAI ``Software``/``Comment``, InvokeAI ``invokeai_metadata``, Fooocus
  ``fooocus_scheme``, SwarmUI ``sui_image_params`` …) and EXIF/XMP ``Software``/``CreatorTool`` naming one.

It never blends into the score, and **absence of metadata is never evidence**: stripping metadata is what
every upload pipeline does, so a file without any says nothing. A C2PA AI claim counts only when the
manifest validates (``Valid`` or ``Trusted``); a tampered manifest (``Invalid``) is reported, not believed.
Unsigned claims (XMP, text chunks) are self-declarations and count as claims; ``decide`` lets a claim
decide only where neither a known copy nor a confident model/kNN verdict does.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from xml.etree import ElementTree

from fakebank.preprocess import image_mime

TRUST_ANCHORS_ENV = "FAKEBANK_C2PA_TRUST_ANCHORS"
# IPTC NewsCodes digital source types that mean "made by a trained generative model"
# (https://cv.iptc.org/newscodes/digitalsourcetype/); a value matches on its last path segment.
AI_SOURCE_TYPES = frozenset({"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia"})
IPTC_EXT_NS = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
XMP_PNG_KEY = "XML:com.adobe.xmp"
JPEG_XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
# PNG/WebP/JPEG text keys that only image generators write, with the tool that writes each.
GENERATOR_KEYS = {
    "parameters": "AUTOMATIC1111 / Forge / SD.Next / Fooocus",
    "prompt": "ComfyUI (or Easy Diffusion)",
    "workflow": "ComfyUI",
    "invokeai_metadata": "InvokeAI",
    "invokeai_graph": "InvokeAI",
    "sd-metadata": "InvokeAI (legacy)",
    "dream": "InvokeAI (legacy)",
    "fooocus_scheme": "Fooocus",
    "sui_image_params": "SwarmUI",
    "generation_data": "Tensor.Art / civitai",
    "negative_prompt": "Easy Diffusion",
}
# Software / CreatorTool / Source values that name an image generator (case-insensitive substrings).
GENERATOR_NAMES = (
    "novelai", "stable diffusion", "stablediffusion", "automatic1111", "comfyui", "invokeai", "fooocus",
    "midjourney", "dall-e", "dall·e", "dalle", "firefly", "imagen", "ideogram", "leonardo.ai", "flux",
    "sdxl", "dreamstudio", "nightcafe", "craiyon", "bing image creator", "gpt-4o", "chatgpt", "swarmui",
    "draw things", "diffusionbee", "krea", "playground ai", "runway",
)
# A1111's `parameters` text: prompt lines, then "Steps: N, Sampler: …".
_A1111 = re.compile(r"\bSteps:\s*\d+.*\bSampler:", re.S)
MAX_TEXT_BYTES = 1 << 20  # a compressed text chunk is inflated to at most this much (zip-bomb guard)
MAX_DETAIL = 200  # characters of a value quoted in an evidence detail


@dataclass(frozen=True)
class Evidence:
    kind: str  # c2pa | iptc_digital_source_type | generator_chunk | software | c2pa_remote | c2pa_error
    detail: str
    ai: bool  # whether this item, on its own, claims AI generation

    def to_dict(self) -> dict:
        return {"kind": self.kind, "detail": self.detail, "ai": self.ai}


@dataclass(frozen=True)
class Provenance:
    ai_claim: bool  # some evidence claims AI generation (a C2PA one only when its manifest validates)
    evidence: list[Evidence] = field(default_factory=list)
    c2pa: dict | None = None  # None: no C2PA manifest (absence is not evidence)

    def to_dict(self) -> dict:
        return {"ai_claim": self.ai_claim, "evidence": [e.to_dict() for e in self.evidence], "c2pa": self.c2pa}


def is_ai_source_type(value: object) -> bool:
    """Whether an IPTC digital source type (URI or bare code, whitespace-stripped) names trained media."""
    if not isinstance(value, str):
        return False
    code = re.split(r"[/#:]", value.strip())[-1]
    return code in AI_SOURCE_TYPES


_GENERATOR_RE = re.compile(r"(?<![\w])(?:" + "|".join(re.escape(n) for n in GENERATOR_NAMES) + r")(?![\w])", re.I)


def names_generator(value: str) -> bool:
    """Whether a Software/CreatorTool/… value names an image generator (whole words: "Imagen", not "ImageNet")."""
    return _GENERATOR_RE.search(value) is not None


def _quote(value: str) -> str:
    value = " ".join(value.split())
    return value if len(value) <= MAX_DETAIL else value[: MAX_DETAIL - 1] + "…"


def read_provenance(data: bytes, *, trust_anchors: str | None = None) -> Provenance:
    """Everything the file's own bytes say about its origin. Never raises on damaged metadata: a part that
    cannot be read is skipped (or, for C2PA, reported) and the rest goes on.

    `trust_anchors`: PEM text of root certificates whose manifests read ``Trusted``; None → the file named
    by FAKEBANK_C2PA_TRUST_ANCHORS, if set.
    """
    evidence: list[Evidence] = []
    meta = container_metadata(data)
    c2pa = read_c2pa(data, mime=meta.mime, trust_anchors=trust_anchors)
    if c2pa is not None:
        evidence.extend(_c2pa_evidence(c2pa))
    for xmp in meta.xmp:
        evidence.extend(_xmp_evidence(xmp))
    for key, value in meta.text:
        ev = _text_evidence(key, value)
        if ev is not None:
            evidence.append(ev)
    for tag, value in meta.exif:
        evidence.append(Evidence("software", f"EXIF {tag}: {_quote(value)}", names_generator(value)))
    if c2pa is None and meta.remote_manifest:  # a reference the Reader did not report: say so
        evidence.append(Evidence("c2pa_remote", f"remote manifest at {meta.remote_manifest} not fetched "
                                 "(fetching is off)", False))
    return Provenance(ai_claim=any(e.ai for e in evidence), evidence=evidence, c2pa=c2pa)


# ---------------------------------------------------------------------------------------------------------
# C2PA


def _trust_anchors(explicit: str | None) -> str | None:
    if explicit is not None:
        return explicit
    path = os.environ.get(TRUST_ANCHORS_ENV)
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None  # an unreadable anchor file only means nothing reads Trusted


def read_c2pa(data: bytes, *, mime: str | None = None, trust_anchors: str | None = None) -> dict | None:
    """The C2PA summary of a file, or None when it has no manifest (or c2pa-python cannot read its type)."""
    try:
        import c2pa
    except ImportError:
        return {"state": None, "error": "c2pa-python is not installed; C2PA manifests were not read"}
    settings: dict = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
    anchors = _trust_anchors(trust_anchors)
    if anchors:
        settings["trust"] = {"user_anchors": anchors}
    try:
        context = c2pa.Context.from_dict(settings)
        reader = c2pa.Reader.try_create(mime, io.BytesIO(data), context=context)
    except c2pa.C2paError as e:
        message = str(e)
        if type(e).__name__ == "_C2paNotSupported" or message.startswith("NotSupported"):
            return None  # a format c2pa does not handle carries no manifest it could read
        remote = re.search(r"\bfrom url (\S+)", message)
        if message.startswith("Remote") or remote:
            return {"state": None, "remote_url": remote.group(1) if remote else None, "fetched": False,
                    "error": "the manifest is remote and fetching is off"}
        if b"c2pa" not in data:
            return None  # an asset c2pa cannot parse, with no manifest label in it: nothing to report
        return {"state": None, "error": _quote(message)}
    if reader is None:
        return None
    with reader:
        store = json.loads(reader.json())
        state = reader.get_validation_state() or store.get("validation_state")
    return summarize_store(store, state)


def summarize_store(store: dict, state: str | None) -> dict:
    """The fields fakebank reports from a c2pa-python manifest store (its ``Reader.json()``)."""
    manifests = store.get("manifests") or {}
    active = manifests.get(store.get("active_manifest") or "") or {}
    sig = active.get("signature_info") or {}
    source_types = []
    for label, manifest in manifests.items():
        for assertion in manifest.get("assertions") or []:
            if not str(assertion.get("label", "")).startswith("c2pa.actions"):
                continue
            for action in (assertion.get("data") or {}).get("actions") or []:
                dst = action.get("digitalSourceType") if isinstance(action, dict) else None
                if isinstance(dst, str):
                    source_types.append({"manifest": label, "active": label == store.get("active_manifest"),
                                         "action": action.get("action"), "digitalSourceType": dst.strip(),
                                         "ai": is_ai_source_type(dst)})
    failures = sorted({s.get("code") for s in store.get("validation_status") or [] if s.get("code")})
    return {
        "state": state,
        "active_manifest": store.get("active_manifest"),
        "signer": {"issuer": sig.get("issuer"), "common_name": sig.get("common_name"), "alg": sig.get("alg"),
                   "time": sig.get("time")},
        "claim_generator": _claim_generator(active),
        "ai_action": any(s["ai"] for s in source_types),
        "digital_source_types": source_types,
        "validation_failures": failures,
        "manifests": len(manifests),
    }


def _claim_generator(manifest: dict) -> str | None:
    if manifest.get("claim_generator"):
        return str(manifest["claim_generator"])
    info = manifest.get("claim_generator_info") or []
    if info and isinstance(info[0], dict) and info[0].get("name"):
        return " ".join(str(info[0][k]) for k in ("name", "version") if info[0].get(k))
    return None


def _c2pa_evidence(c2pa: dict) -> list[Evidence]:
    if c2pa.get("remote_url") is not None or c2pa.get("fetched") is False:
        return [Evidence("c2pa_remote", f"remote manifest at {c2pa.get('remote_url')} not fetched (fetching is off)",
                         False)]
    if c2pa.get("state") is None:
        return [Evidence("c2pa_error", f"C2PA manifest could not be read: {c2pa.get('error')}", False)]
    valid = c2pa["state"] in ("Valid", "Trusted")
    signer = c2pa["signer"].get("common_name") or c2pa["signer"].get("issuer") or "unknown signer"
    detail = f"{c2pa['state']} manifest signed by {signer}, claim generator {c2pa.get('claim_generator')}"
    ai_types = sorted({s["digitalSourceType"] for s in c2pa["digital_source_types"] if s["ai"]})
    if ai_types:
        detail += "; digitalSourceType " + ", ".join(ai_types)
        if not valid:
            detail += " (not believed: the manifest does not validate)"
    return [Evidence("c2pa", detail, valid and bool(ai_types))]


# ---------------------------------------------------------------------------------------------------------
# containers: JPEG, PNG, WebP — metadata only, never pixels


@dataclass
class ContainerMetadata:
    mime: str | None = None
    xmp: list[str] = field(default_factory=list)
    text: list[tuple[str, str]] = field(default_factory=list)  # (key, value) text chunks / comments
    exif: list[tuple[str, str]] = field(default_factory=list)  # (tag name, value) of Software-like tags
    remote_manifest: str | None = None  # dcterms:provenance of an XMP packet


def container_metadata(data: bytes) -> ContainerMetadata:
    """Walk the container's segments/chunks up to the pixels; damaged structures end the walk quietly."""
    meta = ContainerMetadata()
    try:
        meta.mime = image_mime(data)
        walk = {"image/png": _png, "image/jpeg": _jpeg, "image/webp": _webp}.get(meta.mime)
        if walk is not None:
            walk(data, meta)
    except (struct.error, IndexError, ValueError):
        pass  # truncated or damaged: keep what was read
    for xmp in meta.xmp:
        m = re.search(r"dcterms:provenance(?:=\"|>)\s*([^\"<\s]+)", xmp)
        if m:
            meta.remote_manifest = m.group(1)
    return meta


def _inflate(raw: bytes) -> bytes:
    d = zlib.decompressobj()
    try:
        return d.decompress(raw, MAX_TEXT_BYTES)
    except zlib.error:
        return b""


def _png(data: bytes, meta: ContainerMetadata) -> None:
    pos = 8
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if ctype == b"IEND":
            break
        if ctype == b"tEXt" and b"\x00" in body:
            key, value = body.split(b"\x00", 1)
            meta.text.append((key.decode("latin-1"), value.decode("latin-1")))
        elif ctype == b"zTXt" and b"\x00" in body:
            key, rest = body.split(b"\x00", 1)
            meta.text.append((key.decode("latin-1"), _inflate(rest[1:]).decode("latin-1")))
        elif ctype == b"iTXt" and b"\x00" in body:
            key, rest = body.split(b"\x00", 1)
            compressed, _method = rest[0], rest[1]
            _lang, _, rest = rest[2:].partition(b"\x00")
            _tkey, _, text = rest.partition(b"\x00")
            value = (_inflate(text) if compressed else text).decode("utf-8", "replace")
            name = key.decode("latin-1")
            if name == XMP_PNG_KEY:
                meta.xmp.append(value)
            else:
                meta.text.append((name, value))
        elif ctype == b"eXIf":
            _exif(body, meta)


def _jpeg(data: bytes, meta: ContainerMetadata) -> None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: the pixels begin
            break
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        body = data[pos + 4:pos + 2 + length]
        pos += 2 + length
        if marker == 0xE1 and body.startswith(JPEG_XMP_HEADER):
            meta.xmp.append(body[len(JPEG_XMP_HEADER):].decode("utf-8", "replace"))
        elif marker == 0xE1 and body.startswith(b"Exif\x00\x00"):
            _exif(body, meta)
        elif marker == 0xFE:  # COM
            meta.text.append(("Comment", body.decode("utf-8", "replace")))


def _webp(data: bytes, meta: ContainerMetadata) -> None:
    pos = 12
    while pos + 8 <= len(data):
        ctype, length = struct.unpack("<4sI", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 8 + length + (length & 1)
        if ctype == b"XMP ":
            meta.xmp.append(body.decode("utf-8", "replace"))
        elif ctype == b"EXIF":
            _exif(body, meta)


# EXIF tags whose text can name a generator: Software, ImageDescription, Make, Artist, UserComment (A1111
# writes its parameters there in JPEG/WebP).
_EXIF_TAGS = {0x0131: "Software", 0x010E: "ImageDescription", 0x010F: "Make", 0x013B: "Artist"}
_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286


def _exif(raw: bytes, meta: ContainerMetadata) -> None:
    from PIL import Image

    exif = Image.Exif()
    try:
        exif.load(raw)
        tags = {t: exif.get(t) for t in _EXIF_TAGS}
        user_comment = exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except Exception:  # noqa: BLE001 - Pillow's TIFF parser raises many kinds on damaged EXIF; skip it
        return
    for tag, name in _EXIF_TAGS.items():
        value = tags.get(tag)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str) and value.strip("\x00 ").strip():
            if name == "Software" or names_generator(value):
                meta.exif.append((name, value.strip("\x00 ")))
    if isinstance(user_comment, bytes):  # 8-byte character-code header, then the text
        head, body = user_comment[:8], user_comment[8:]
        text = body.decode("utf-16-be" if head.startswith(b"UNICODE") else "utf-8", "replace").strip("\x00 ")
        if text:
            meta.text.append(("UserComment", text))


# ---------------------------------------------------------------------------------------------------------
# XMP and text chunks → evidence


def _xmp_evidence(xmp: str) -> list[Evidence]:
    out = []
    for value in _xmp_values(xmp, IPTC_EXT_NS, "DigitalSourceType"):
        out.append(Evidence("iptc_digital_source_type", f"XMP Iptc4xmpExt:DigitalSourceType {_quote(value)}",
                            is_ai_source_type(value)))
    for ns, name in (("http://ns.adobe.com/xap/1.0/", "CreatorTool"),
                     ("http://ns.adobe.com/tiff/1.0/", "Software")):
        for value in _xmp_values(xmp, ns, name):
            if names_generator(value):
                out.append(Evidence("software", f"XMP {name}: {_quote(value)}", True))
    return out


def _xmp_values(xmp: str, ns: str, name: str) -> list[str]:
    """Values of one XMP property, as an attribute, an element's text or an rdf:resource."""
    qname = f"{{{ns}}}{name}"
    try:
        root = ElementTree.fromstring(xmp.strip().strip("\x00").encode("utf-8"))
    except ElementTree.ParseError:
        # Not well-formed (some writers pad or truncate): fall back to the conventional prefix.
        prefix = "Iptc4xmpExt" if ns == IPTC_EXT_NS else {"CreatorTool": "xmp", "Software": "tiff"}[name]
        pat = rf"{prefix}:{name}(?:=\"([^\"]*)\"|>([^<]*)<|\s+rdf:resource=\"([^\"]*)\")"
        return [next(g for g in m.groups() if g is not None) for m in re.finditer(pat, xmp)]
    values = []
    for el in root.iter():
        if qname in el.attrib:
            values.append(el.attrib[qname])
        if el.tag == qname:
            res = el.attrib.get("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}resource")
            text = res if res is not None else "".join(el.itertext())
            if text.strip():
                values.append(text.strip())
    return values


def _text_evidence(key: str, value: str) -> Evidence | None:
    if not value.strip():
        return None
    k = key.strip().lower()
    if k in GENERATOR_KEYS:
        if k == "parameters" and not (_A1111.search(value) or value.lstrip().startswith("{")):
            return Evidence("generator_chunk", f"text chunk 'parameters' (not in a generator's format): "
                            f"{_quote(value)}", False)
        return Evidence("generator_chunk", f"text chunk '{key}' ({GENERATOR_KEYS[k]}): {_quote(value)}", True)
    if k in ("software", "source", "title", "description", "author", "comment", "usercomment"):
        if names_generator(value) or (k in ("comment", "usercomment") and _looks_like_generation(value)):
            return Evidence("generator_chunk", f"text chunk '{key}': {_quote(value)}", True)
        if k == "software":
            return Evidence("software", f"text chunk 'Software': {_quote(value)}", False)
    return None


def _looks_like_generation(value: str) -> bool:
    """NovelAI's `Comment` is JSON with sampler settings; A1111 writes its parameters to UserComment."""
    if _A1111.search(value):
        return True
    try:
        obj = json.loads(value)
    except ValueError:
        return False
    return isinstance(obj, dict) and {"steps", "sampler"} <= set(obj) or isinstance(obj, dict) and "uc" in obj
