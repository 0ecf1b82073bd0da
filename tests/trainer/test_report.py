"""The HTML report: self-contained, with a Recall@K plot and a popularity-vs-catalogue plot per method."""
from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from recserve.bundle import resolve, verify
from trainer import evaluate as ev
from trainer.build import evaluate_bundle, record_evaluation
from trainer.synth import synth


@pytest.fixture(scope="module")
def report_html(demo_bundle, tmp_path_factory) -> tuple[str, dict]:
    root = tmp_path_factory.mktemp("report") / "root"
    shutil.copytree(demo_bundle, root)
    ds, _ = synth(300, 200, seed=0)            # the demo bundle's data
    path = resolve(root)
    res = evaluate_bundle(path, ds, max_users=300)
    record_evaluation(path, res)
    verify(root)                                # the report files do not break verification
    return (path / "report.html").read_text(), res


def _svgs(page: str) -> list[ET.Element]:
    """Every inline chart, parsed (so each must be well-formed)."""
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", page, flags=re.S)]


def _series(svg: ET.Element) -> dict[str, list[tuple[float, float]]]:
    out = {}
    for p in svg.iter("polyline"):
        assert p.get("data-series") not in out, p.get("data-series")
        out[p.get("data-series")] = [tuple(map(float, xy.split(","))) for xy in p.get("points").split()]
    return out


def test_report_has_one_recall_curve_per_method(report_html):
    page, res = report_html
    svgs = _svgs(page)
    assert len(svgs) == 2
    recall = _series(svgs[0])
    assert set(recall) == set(ev.METHODS) == set(res["methods"])
    assert all(len(pts) == len(ev.KS) for pts in recall.values())
    for m in ev.METHODS:                        # recall@K cannot fall as K grows: the curves rise (y down)
        r = [res["methods"][m][f"recall@{k}"] for k in ev.KS]
        assert r == sorted(r), (m, r)
        ys = [y for _, y in recall[m]]
        assert ys == sorted(ys, reverse=True), (m, ys)
    for k in ev.KS:
        assert f">{k}</text>" in ET.tostring(svgs[0], encoding="unicode")


def test_report_has_popularity_profiles_against_the_catalogue(report_html):
    page, res = report_html
    pop = _series(_svgs(page)[1])
    assert set(pop) == set(ev.METHODS) | {"catalogue items", "training interactions"}
    assert all(len(pts) == ev.DECILES for pts in pop.values())
    d = res["popularity_deciles"]
    for m in ev.METHODS:
        assert sum(d["methods"][m]) == pytest.approx(1.0, abs=1e-3)
    assert d["items"] == pytest.approx([0.1] * 10, abs=0.01)
    # popular items really are popular: the top decile holds more interactions than the bottom one
    assert d["interactions"][0] > d["interactions"][-1]
    # popularity recommends from the head
    assert d["methods"]["popularity"][0] > 0.5


def test_report_is_self_contained(report_html):
    page, _ = report_html
    low = page.lower()
    for needle in ("http://", "https://", "src=", "<script", "<link", "url(", "<img", "href="):
        assert needle not in low, needle
    assert low.count("<svg") == 2 and "full+mmr" in page


def test_popularity_deciles_by_hand():
    # 20 items ranked by popularity: rows 19, 18, ..., 0; item 19 alone has all the weight but one
    pop_rows = np.arange(19, -1, -1).astype(np.int32)
    pop_scores = np.log1p(np.array([9.0, 1.0] + [0.0] * 18)).astype(np.float32)
    recs = {"head": [np.array([19, 18]), np.array([19])], "tail": [np.array([0, 1, 2, 3])], "none": []}
    d = ev.popularity_deciles(pop_rows, pop_scores, recs, k=3)
    assert d["items"] == [0.1] * 10
    assert d["interactions"] == [1.0] + [0.0] * 9           # items 19 and 18 form decile 1
    assert d["methods"]["head"] == [1.0] + [0.0] * 9
    assert d["methods"]["tail"] == pytest.approx([0.0] * 8 + [1 / 3, 2 / 3], abs=1e-4)   # top 3: rows 0-2
    assert d["methods"]["none"] == [0.0] * 10


def test_report_gives_each_rows_list_length_and_the_cut_as_a_date(report_html):
    """The printed table's mean_len (the length a row's recall@50 is at) was missing from the HTML, and the
    cut was shown in raw unix seconds."""
    import datetime as dt

    page, res = report_html
    for m, v in res["methods"].items():
        row = re.search(rf"<tr><th>{re.escape(m)}</th>(.*?)</tr>", page).group(1)
        assert row.endswith(f"<td>{v['mean_len']:.1f}</td>"), (m, row)
    day = dt.datetime.fromtimestamp(res["cut"], dt.timezone.utc).strftime("%Y-%m-%d")
    assert f"after {day} " in page and "<th>mean_len</th>" in page
