"""kNN-augmented verdicts with controlled embeddings (no model involved)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bankutil import DIM, MODEL_INFO, make_item, some_detail, unit
from fakebank.api import Fakebank, average_precision
from fakebank.bank import Bank, BankWriter
from fakebank.decide import FusionParams, Neighbor, decide, fit_fusion, knn_vote
from fakebank.embed import Embedding
from fakebank.grid import GRID_CELLS, GRID_WIDTH, PatchGrid
from fakebank.pdq import PdqHash
from fakebank.signals import EMPTY_LOCAL, ImageSignals

P = FusionParams()


def nb(i, sim, label="fake", pdq=None):
    return Neighbor(id=i, path=f"/x/{i}.jpg", label=label, campaign=None, similarity=sim, pdq_distance=pdq)


def test_model_alone_when_no_neighbour_is_close():
    d = decide(2.0, [nb(1, 0.5), nb(2, 0.3, "real")])
    assert (d.verdict, d.reason, d.p_knn, d.match) == ("fake", "model", None, None)
    assert d.score == pytest.approx(d.p_model) == pytest.approx(1 / (1 + np.exp(-2.0)))


def test_close_neighbours_overrule_a_wrong_model():
    # model says real with p 0.05; three close known fakes say otherwise
    d = decide(-2.94, [nb(1, 0.95), nb(2, 0.93), nb(3, 0.91)])
    assert d.reason == "knn" and d.verdict == "fake"
    assert d.p_model < 0.06 and d.p_knn > 0.8 and d.score > 0.9


def test_one_weak_neighbour_does_not_overrule_a_confident_model():
    d = decide(-6.0, [nb(1, 0.81)])
    assert d.reason == "knn" and d.verdict == "real"


def test_near_duplicate_takes_the_known_label_with_the_match_as_evidence():
    d = decide(-5.0, [nb(1, 0.6, "fake", pdq=12), nb(2, 0.9, "real")])
    assert (d.verdict, d.reason, d.score) == ("fake", "near_duplicate", 1.0)
    assert d.match.id == 1 and d.match.pdq_distance == 12
    d = decide(5.0, [nb(7, 0.995, "real")])
    assert (d.verdict, d.reason, d.match.id) == ("real", "near_duplicate", 7)


def test_the_match_is_the_best_evidenced_copy_and_says_what_verified_it():
    """A copy found by keypoints outranks a closer-looking one found by embeddings alone (the issue's dark
    look-alike had cls 0.999), and the match record names the signal and its numbers."""
    judged = lambda n, **kw: replace(n, judged=True, **kw)  # noqa: E731 - as api.neighbors builds them
    look_alike = judged(nb(1, 0.999, "real"), signal="embedding", spatial_agreement=0.45)
    original = judged(nb(2, 0.97, "fake"), signal="local", inliers=57, spatial_agreement=0.81)
    unrelated = judged(nb(3, 0.995, "real"))  # close, but dedup found no signal: not a copy
    d = decide(0.0, [look_alike, original, unrelated])
    assert (d.verdict, d.match.id) == ("fake", 2)
    assert d.match.match_dict() == {"id": 2, "path": "/x/2.jpg", "label": "fake", "campaign": None,
                                    "similarity": 0.97, "pdq_distance": None, "signal": "local", "inliers": 57,
                                    "spatial_agreement": 0.81}
    assert set(d.match.to_dict()) == {"id", "path", "label", "campaign", "similarity", "pdq_distance"}
    pdq = judged(nb(4, 0.9, "real", pdq=20), signal="pdq")
    assert decide(0.0, [original, pdq]).match.id == 4


def test_pdq_threshold_is_inclusive():
    assert decide(0.0, [nb(1, 0.1, pdq=31)]).reason == "near_duplicate"
    assert decide(0.0, [nb(1, 0.1, pdq=32)]).reason == "model"


def test_unknown_label_copy_is_a_match_but_not_a_verdict():
    d = decide(3.0, [nb(4, 0.999, "unknown")])
    assert d.match.id == 4 and d.reason == "model" and d.verdict == "fake"


def test_an_unknown_copy_never_hides_a_labelled_one():
    """The closer copy is unlabelled (PDQ 0), a farther one is labelled fake (PDQ 8): the labelled copy is the
    match and gives the verdict."""
    judged = lambda n, **kw: replace(n, judged=True, **kw)  # noqa: E731 - as api.neighbors builds them
    unknown = judged(nb(1, 1.0, "unknown", pdq=0), signal="pdq")
    fake = judged(nb(3, 0.998, "fake", pdq=8), signal="pdq")
    d = decide(-3.0, [unknown, fake])
    assert (d.verdict, d.reason, d.score, d.match.id) == ("fake", "near_duplicate", 1.0, 3)
    exact = judged(nb(5, 1.0, "real"), signal="sha256")  # the same bytes outrank any hash distance
    assert decide(0.0, [fake, exact]).match.id == 5


def test_uncertain_band():
    assert decide(0.1, []).verdict == "uncertain"
    assert decide(0.5, []).verdict == "fake"


def test_knn_vote_is_similarity_weighted_with_a_prior():
    assert knn_vote([nb(1, 0.9), nb(2, 0.9, "real")], P) == pytest.approx(0.5)
    assert knn_vote([nb(1, 1.0)], P) == pytest.approx(1.5 / 2.0)
    assert knn_vote([nb(1, 0.9, "unknown")], P) is None


def test_fit_fusion_learns_to_trust_neighbours_when_the_model_is_noise():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    logits = rng.normal(0, 1, 400)  # the model knows nothing
    p_knn = [0.85 if t else 0.15 for t in y]  # the bank knows
    fitted = fit_fusion(logits, p_knn, y, P)
    assert fitted.w_knn > P.w_knn * 0.5 and abs(fitted.w_model) < 0.5
    from fakebank.decide import fuse
    scores = np.array([fuse(lg, p, fitted) for lg, p in zip(logits, p_knn)])
    assert average_precision(scores, y) == pytest.approx(1.0)


def test_average_precision():
    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([1, 0, 1])) == pytest.approx((1 + 2 / 3) / 2)


# -- through the bank: relabelling corrects near-copies at once -------------------------------------

def _query_embedding(cls: np.ndarray, logit: float, grid: PatchGrid | None = None) -> Embedding:
    pdq = PdqHash(hash=bytes(32), quality=0, dihedral=tuple(bytes(32) for _ in range(8)))
    signals = ImageSignals(box=(0, 0, 10, 10), pdq_trim=None, local=some_detail(np.random.default_rng(7)), local_mirror=EMPTY_LOCAL)
    return Embedding(path="/q.jpg", sha256="0" * 64, width=10, height=10, pdq=pdq, logit=logit,
                     p_fake=float(1 / (1 + np.exp(-logit))), cls=unit(cls), patch=unit(cls), patch_grid=grid,
                     signals=signals)


def test_relabelling_an_item_flips_its_near_copies(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.normal(size=DIM)
    grid = rng.normal(size=(GRID_CELLS, GRID_CELLS, GRID_WIDTH))  # the picture's layout, as the model sees it
    with BankWriter(tmp_path, model_info=MODEL_INFO, embedding_dim=DIM) as w:
        w.add([replace(make_item(1, cls=base), patch_grid=PatchGrid.quantise(grid).to_bytes(),
                       local=some_detail(np.random.default_rng(1)).to_bytes())]
              + [make_item(i) for i in range(2, 30)])
    fb = Fakebank(tmp_path)
    near_copy = _query_embedding(base + 0.02 * rng.normal(size=DIM), logit=3.0,  # model: fake
                                 grid=PatchGrid.quantise(grid + 0.2 * rng.normal(size=grid.shape)))
    bank = Bank.open(tmp_path)
    params = FusionParams.from_dict(bank.manifest["fusion"])
    d = decide(near_copy.logit, fb.neighbors(bank, near_copy, 5, params), params)
    assert (d.verdict, d.reason, d.match.id) == ("fake", "near_duplicate", 1)

    fb.label([1], "real")  # an analyst marks the false positive
    bank = Bank.open(tmp_path)
    d = decide(near_copy.logit, fb.neighbors(bank, near_copy, 5, params), params)
    assert (d.verdict, d.reason, d.match.id) == ("real", "near_duplicate", 1)
    assert d.p_model > 0.9  # the model still says fake; the bank corrects it without retraining


def test_the_same_file_is_a_copy_even_where_no_signal_can_judge_it(tmp_path):
    """A plain blue sky photo (PDQ quality 3, too few ORB keypoints): no signal may call another image a copy
    of it, but the very file is one (sha256), so an analyst's relabel takes effect on the next query of it;
    a re-encode of it stays unjudged (untrained vit_small through the real extractor)."""
    from PIL import Image

    sky = Path(__file__).parent / "data/pdq/reg-test-input/labelme-subset/q0003.jpg"
    fb = Fakebank(tmp_path / "bank", weights="untrained:vit_small_patch16_384:0", device="cpu")
    [added] = list(fb.add([str(sky)], label="fake"))
    fb.label([added["id"]], "real")
    [record] = list(fb.query([str(sky)], k=3))
    assert (record["verdict"], record["reason"], record["score"]) == ("real", "near_duplicate", 0.0)
    assert record["match"]["id"] == added["id"] and record["match"]["signal"] == "sha256"
    again = tmp_path / "again.jpg"
    Image.open(sky).save(again, quality=80)
    [record] = list(fb.query([str(again)], k=3))
    assert record["match"] is None or record["match"]["signal"] != "sha256"
