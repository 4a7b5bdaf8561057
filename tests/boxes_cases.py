"""The framed and letterboxed images of tests/data/boxes-ab83f9c, as PNG bytes by name."""

from __future__ import annotations

import io

import test_dedup as td


def cases() -> dict[str, bytes]:
    out = {}
    sources = [(f"{s}", td.DATA / "commfor" / f"{s}.png") for s in ("00000916", "00000845", "00000274")] + \
              [(s, td.LABELME / f"{s}.jpg") for s in ("q2821", "q0122")]
    for stem, path in sources:
        im = td.photo(path)
        im = im.resize((im.width * 2, im.height * 2))
        variants = {"phone-light": td.jpeg(td.phone_frame(im, False), 70)}
        if stem.startswith("0"):
            variants |= {"plain": td.jpeg(im), "letterbox-white": td.jpeg(td.letterbox(im, 0.2, (255, 255, 255))),
                         "phone-dark": td.jpeg(td.phone_frame(im, True), 70)}
        else:
            variants["screenshot"] = td.jpeg(td.screenshot(im))
        for kind, img in variants.items():
            buf = io.BytesIO()
            img.save(buf, "PNG")
            out[f"{stem}-{kind}"] = buf.getvalue()
    return out
