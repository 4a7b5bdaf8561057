"""Provenance evidence: C2PA on images the tests sign themselves (offline CA made with `cryptography`), IPTC
DigitalSourceType in XMP, generator text chunks, EXIF Software, and where a claim sits in the decision order."""

from __future__ import annotations

import datetime
import http.server
import io
import json
import threading
import zlib
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from fakebank.decide import FusionParams, Neighbor, decide
from fakebank.provenance import container_metadata, is_ai_source_type, read_provenance

c2pa = pytest.importorskip("c2pa", reason="c2pa-python is a runtime dependency: pip install -e .")
x509 = pytest.importorskip("cryptography.x509")

DATA = Path(__file__).parent / "data"
IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
AI = IPTC + "trainedAlgorithmicMedia"
CAPTURE = IPTC + "digitalCapture"


# ---------------------------------------------------------------------------------------------------------
# a test CA and signer, made offline


class Signing:
    def __init__(self) -> None:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        now = datetime.datetime.now(datetime.timezone.utc)

        def name(cn: str):
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                              x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fakebank tests")])

        def usage(**on):
            keys = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                    "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
            return x509.KeyUsage(**{k: on.get(k, False) for k in keys})

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (x509.CertificateBuilder().subject_name(name("fakebank test root")).issuer_name(name("fakebank test root"))
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(usage(key_cert_sign=True, crl_sign=True), critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name("fakebank test signer")).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(usage(digital_signature=True), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        pem = serialization.Encoding.PEM
        self.ca_pem = ca.public_bytes(pem).decode()
        self.chain = cert.public_bytes(pem) + ca.public_bytes(pem)
        self.key = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        # the Builder's own check after signing must not reach for the network either
        self.context = c2pa.Context.from_dict({"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}})

    def signer(self):
        return c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, self.chain, self.key, None))

    def sign(self, src: bytes, mime: str, source_type: str | None, *, title: str = "test",
             ingredient: bytes | None = None, remote_url: str | None = None) -> tuple[bytes, bytes]:
        """(signed asset, manifest store bytes)."""
        action = {"action": "c2pa.opened" if ingredient else "c2pa.created"}
        if source_type:
            action["digitalSourceType"] = source_type
        manifest = {"claim_generator_info": [{"name": "fakebank-tests", "version": "1.0"}], "title": title,
                    "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": [action]}}]}
        if ingredient:
            action["parameters"] = {"ingredientIds": ["parent"]}
        builder = c2pa.Builder(manifest, context=self.context)
        if ingredient:
            builder.add_ingredient({"title": "parent.jpg", "relationship": "parentOf", "label": "parent"},
                                   mime, io.BytesIO(ingredient))
        if remote_url:
            builder.set_no_embed()
            builder.set_remote_url(remote_url)
        out = io.BytesIO()
        store = builder.sign(self.signer(), mime, io.BytesIO(src), out)
        return out.getvalue(), store


@pytest.fixture(scope="module")
def ca() -> Signing:
    return Signing()


def jpeg(colour=(200, 40, 30), size=(64, 48), **save) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def png(img: Image.Image | None = None, info: PngImagePlugin.PngInfo | None = None) -> bytes:
    buf = io.BytesIO()
    (img or Image.new("RGB", (32, 32), (10, 120, 200))).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------
# C2PA


def test_c2pa_valid_ai_claim(ca):
    signed, _ = ca.sign(jpeg(), "image/jpeg", AI)
    p = read_provenance(signed)
    assert p.ai_claim
    assert p.c2pa["state"] == "Valid"  # signature checks out; our test root is in no trust list
    assert p.c2pa["ai_action"] and p.c2pa["signer"]["common_name"] == "fakebank test signer"
    assert p.c2pa["signer"]["issuer"] == "fakebank tests"
    assert p.c2pa["claim_generator"] == "fakebank-tests 1.0"
    assert [(e.kind, e.ai) for e in p.evidence] == [("c2pa", True)]
    # with our root as a trust anchor the same file reads Trusted
    trusted = read_provenance(signed, trust_anchors=ca.ca_pem)
    assert trusted.c2pa["state"] == "Trusted" and trusted.ai_claim
    json.dumps(p.to_dict())


def test_c2pa_trust_anchors_from_the_environment(ca, tmp_path, monkeypatch):
    signed, _ = ca.sign(jpeg(), "image/jpeg", AI)
    (tmp_path / "roots.pem").write_text(ca.ca_pem)
    monkeypatch.setenv("FAKEBANK_C2PA_TRUST_ANCHORS", str(tmp_path / "roots.pem"))
    assert read_provenance(signed).c2pa["state"] == "Trusted"


def test_c2pa_valid_manifest_without_ai_claim(ca):
    signed, _ = ca.sign(jpeg(), "image/jpeg", CAPTURE)
    p = read_provenance(signed)
    assert p.c2pa["state"] == "Valid" and not p.c2pa["ai_action"]
    assert not p.ai_claim and [(e.kind, e.ai) for e in p.evidence] == [("c2pa", False)]
    assert p.c2pa["digital_source_types"][0]["digitalSourceType"] == CAPTURE


def test_c2pa_ai_claim_in_an_ingredient(ca):
    """An edit (c2pa.opened, no source type) of an AI-generated parent: the claim sits in the ingredient's
    manifest, which the store carries, and still counts."""
    parent, _ = ca.sign(jpeg((20, 200, 90)), "image/jpeg", AI, title="parent.jpg")
    child, _ = ca.sign(jpeg((20, 200, 91)), "image/jpeg", None, ingredient=parent)
    p = read_provenance(child)
    assert p.c2pa["state"] == "Valid" and p.c2pa["manifests"] == 2
    ai = [s for s in p.c2pa["digital_source_types"] if s["ai"]]
    assert ai and not any(s["active"] for s in ai)
    assert p.ai_claim


def test_c2pa_tampered_after_signing_reads_invalid(ca):
    signed, _ = ca.sign(jpeg(), "image/jpeg", AI)
    at = signed.rfind(b"\xff\xd9") - 8  # inside the entropy-coded pixels, after the manifest
    tampered = bytearray(signed)
    tampered[at] ^= 0x55
    p = read_provenance(bytes(tampered))
    assert p.c2pa["state"] == "Invalid"
    assert "assertion.dataHash.mismatch" in p.c2pa["validation_failures"]
    assert p.c2pa["ai_action"]  # the manifest still says so …
    assert not p.ai_claim  # … but an invalid manifest is reported, not believed
    assert "not believed" in p.evidence[0].detail


def test_no_manifest_is_no_evidence():
    for data in (jpeg(), png(), (DATA / "commfor" / "00000274.png").read_bytes()):
        p = read_provenance(data)
        assert p.c2pa is None and p.evidence == [] and not p.ai_claim
    assert not read_provenance(b"not an image at all").ai_claim


class _Counter(http.server.BaseHTTPRequestHandler):
    hits: list = []
    body = b""

    def do_GET(self):  # noqa: N802 - http.server's name
        _Counter.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/c2pa")
        self.end_headers()
        self.wfile.write(_Counter.body)

    def log_message(self, *args):
        pass


def test_remote_manifest_is_not_fetched(ca):
    """A file whose manifest lives at a URL: reported as remote and unfetched, and the URL (a live server
    on loopback that would serve the manifest) is never asked."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Counter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/manifest.c2pa"
        signed, store = ca.sign(jpeg(), "image/jpeg", AI, remote_url=url)
        _Counter.body, _Counter.hits = store, []
        assert url.encode() in signed and b"c2pa.signature" not in signed
        p = read_provenance(signed)
        assert p.c2pa["fetched"] is False and p.c2pa["remote_url"] == url and p.c2pa["state"] is None
        assert not p.ai_claim and [(e.kind, e.ai) for e in p.evidence] == [("c2pa_remote", False)]
        assert _Counter.hits == []
    finally:
        server.shutdown()


def test_c2pa_png(ca):
    signed, _ = ca.sign(png(), "image/png", AI)
    p = read_provenance(signed)
    assert p.c2pa["state"] == "Valid" and p.ai_claim


# ---------------------------------------------------------------------------------------------------------
# IPTC XMP, generator chunks, EXIF


def xmp(value: str, form: str = "element") -> str:
    prop = {
        "element": f"<Iptc4xmpExt:DigitalSourceType>{value}</Iptc4xmpExt:DigitalSourceType>",
        "resource": f'<Iptc4xmpExt:DigitalSourceType rdf:resource="{value}"/>',
        "attribute": "",
    }[form]
    attr = f' Iptc4xmpExt:DigitalSourceType="{value}"' if form == "attribute" else ""
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"'
            f' xmlns:xmp="http://ns.adobe.com/xap/1.0/"{attr}>{prop}</rdf:Description></rdf:RDF></x:xmpmeta>'
            '<?xpacket end="w"?>')


@pytest.mark.parametrize("form", ["element", "resource", "attribute"])
@pytest.mark.parametrize("container", ["jpeg", "png", "webp"])
def test_iptc_digital_source_type_in_xmp(container, form):
    def write(packet: str) -> bytes:
        img = Image.new("RGB", (32, 24), (90, 90, 90))
        buf = io.BytesIO()
        if container == "png":
            info = PngImagePlugin.PngInfo()
            info.add_itxt("XML:com.adobe.xmp", packet)
            img.save(buf, "PNG", pnginfo=info)
        else:
            img.save(buf, container.upper(), xmp=packet.encode())
        return buf.getvalue()

    ai = read_provenance(write(xmp(f"  {AI}\n ", form)))  # whitespace around the value is stripped
    assert ai.ai_claim and [(e.kind, e.ai) for e in ai.evidence] == [("iptc_digital_source_type", True)]
    composite = read_provenance(write(xmp(IPTC + "compositeWithTrainedAlgorithmicMedia", form)))
    assert composite.ai_claim
    camera = read_provenance(write(xmp(CAPTURE, form)))
    assert not camera.ai_claim and [(e.kind, e.ai) for e in camera.evidence] == [("iptc_digital_source_type", False)]


def test_source_type_codes():
    assert is_ai_source_type(AI) and is_ai_source_type(" trainedAlgorithmicMedia ")
    assert is_ai_source_type("https://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia")
    for other in (CAPTURE, IPTC + "algorithmicMedia", IPTC + "untrainedAlgorithmicMedia", "", None, 3):
        assert not is_ai_source_type(other)


A1111 = ("a castle on a hill, golden hour\nNegative prompt: blurry\nSteps: 30, Sampler: DPM++ 2M Karras, "
         "CFG scale: 7, Seed: 1234, Size: 512x512, Model: sd_xl_base_1.0")


@pytest.mark.parametrize("chunks, tool", [
    ({"parameters": A1111}, "AUTOMATIC1111"),
    ({"prompt": json.dumps({"3": {"class_type": "KSampler", "inputs": {"seed": 1}}}),
      "workflow": json.dumps({"nodes": []})}, "ComfyUI"),
    ({"Software": "NovelAI", "Comment": json.dumps({"steps": 28, "sampler": "k_euler", "uc": "lowres"})}, "NovelAI"),
    ({"invokeai_metadata": json.dumps({"model": {"name": "sdxl"}, "steps": 30})}, "InvokeAI"),
    ({"fooocus_scheme": "fooocus", "parameters": json.dumps({"Prompt": "a cat", "Steps": 30})}, "Fooocus"),
])
def test_generator_text_chunks(chunks, tool):
    info = PngImagePlugin.PngInfo()
    for i, (k, v) in enumerate(chunks.items()):
        if i % 2:
            info.add_itxt(k, v, zip=True)  # compressed iTXt as well as plain tEXt
        else:
            info.add_text(k, v)
    p = read_provenance(png(info=info))
    assert p.ai_claim, p.evidence
    assert any(e.kind == "generator_chunk" and e.ai for e in p.evidence)
    assert p.c2pa is None


def test_ztxt_chunk_and_ordinary_text_chunks():
    # zTXt, which PIL does not write: build one by hand after IHDR
    data = png()
    body = b"parameters\x00\x00" + zlib.compress(A1111.encode("latin-1"))
    chunk = len(body).to_bytes(4, "big") + b"zTXt" + body + zlib.crc32(b"zTXt" + body).to_bytes(4, "big")
    with_ztxt = data[:33] + chunk + data[33:]
    assert container_metadata(with_ztxt).text == [("parameters", A1111)]
    assert read_provenance(with_ztxt).ai_claim
    # ordinary chunks say nothing: a title, a camera's software, a `parameters` that is not a generator's
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "Holiday 2024")
    info.add_text("Software", "GIMP 2.10")
    info.add_text("parameters", "exposure=+0.3")
    p = read_provenance(png(info=info))
    assert not p.ai_claim
    assert [(e.kind, e.ai) for e in p.evidence] == [("software", False), ("generator_chunk", False)]


def test_exif_software():
    def with_software(name: str) -> bytes:
        exif = Image.Exif()
        exif[0x0131] = name
        return jpeg(exif=exif.tobytes())

    photoshop = read_provenance(with_software("Adobe Photoshop 25.0 (Macintosh)"))
    assert not photoshop.ai_claim and [(e.kind, e.ai) for e in photoshop.evidence] == [("software", False)]
    mj = read_provenance(with_software("Midjourney v6"))
    assert mj.ai_claim and "EXIF Software: Midjourney v6" in mj.evidence[0].detail
    # A1111 writes its parameters into EXIF UserComment in JPEGs
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + A1111.encode("utf-16-be")
    assert read_provenance(jpeg(exif=exif.tobytes())).ai_claim


def test_damaged_metadata_is_skipped_not_fatal():
    data = png()
    bad = data[:33] + (1000).to_bytes(4, "big") + b"tEXt" + b"parameters\x00Steps: 3"  # truncated chunk
    p = read_provenance(bad)
    assert not p.ai_claim
    assert read_provenance(b"\xff\xd8\xff\xe1\x00").evidence == []  # c2pa cannot parse it: no manifest either


# ---------------------------------------------------------------------------------------------------------
# where a claim sits in the decision order


def n(label: str, sim: float, pdq: int | None = None) -> Neighbor:
    return Neighbor(id=1, path="x", label=label, campaign=None, similarity=sim, pdq_distance=pdq)


def test_provenance_decides_only_an_uncertain_verdict():
    params = FusionParams()
    # model alone, uncertain (p 0.52): the claim decides, the score is left as it was
    d = decide(0.08, [], params, ai_claim=True)
    assert (d.verdict, d.reason) == ("fake", "provenance") and d.score == pytest.approx(decide(0.08, []).score)
    assert (decide(0.08, []).verdict, decide(0.08, []).reason) == ("uncertain", "model")
    # a known copy comes first, whatever its label
    d = decide(0.08, [n("real", 0.999, 3)], params, ai_claim=True)
    assert (d.verdict, d.reason) == ("real", "near_duplicate")
    # a confident model comes first, either way
    assert (decide(-4.0, [], params, ai_claim=True).verdict, decide(-4.0, [], params, ai_claim=True).reason) == (
        "real", "model")
    assert decide(4.0, [], params, ai_claim=True).reason == "model"
    # a confident kNN vote comes first
    d = decide(0.0, [n("real", 0.95), n("real", 0.93)], params, ai_claim=True)
    assert (d.verdict, d.reason) == ("real", "knn")
    # an uncertain kNN fusion is decided by the claim
    d = decide(0.0, [n("real", 0.9), n("fake", 0.9)], params, ai_claim=True)
    assert (d.verdict, d.reason) == ("fake", "provenance")
    # a copy of an `unknown` item is no known copy: the claim may decide
    assert decide(0.05, [n("unknown", 0.999, 0)], params, ai_claim=True).reason == "provenance"


def test_query_with_provenance_end_to_end(ca, tmp_path):
    """CLI: a sample fake signed with an AI claim; with untrained weights the model is uncertain, so the
    claim decides — only when --provenance asks for it, and never against a known copy."""
    from fakebank.cli import app

    runner = CliRunner()
    weights = "untrained:test_vit:0"
    src = DATA / "commfor" / "00000274.png"
    signed, _ = ca.sign(src.read_bytes(), "image/png", AI)
    path = tmp_path / "signed.png"
    path.write_bytes(signed)
    bank = tmp_path / "bank"
    assert runner.invoke(app, ["add", str(DATA / "commfor" / "00000420.png"), "--bank", str(bank),
                               "--weights", weights]).exit_code == 0

    def query(*extra):
        res = runner.invoke(app, ["query", str(path), "--bank", str(bank), "--json", *extra])
        assert res.exit_code == 0, res.output
        return [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")][0]

    plain = query()
    assert plain["verdict"] == "uncertain" and plain["reason"] == "model" and "provenance" not in plain
    r = query("--provenance")
    assert (r["verdict"], r["reason"]) == ("fake", "provenance") and r["score"] == plain["score"]
    assert r["provenance"]["ai_claim"] and r["provenance"]["c2pa"]["state"] == "Valid"
    # the original (unsigned) picture is in the bank as `real`: the known copy wins over the claim
    assert runner.invoke(app, ["add", str(src), "--bank", str(bank), "--label", "real"]).exit_code == 0
    r = query("--provenance")
    assert (r["verdict"], r["reason"]) == ("real", "near_duplicate") and r["provenance"]["ai_claim"]
