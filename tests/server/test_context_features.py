"""The request context as the ranker sees it: hour and weekday in UTC (from the timestamp when not given,
as the trainer reads them from the logs), and a device that changes no score of a bundle whose logs carry
none (its ranker was trained with the unspecified device only; tests/trainer/test_devices.py trains one on
logs with devices). The API's comments say both."""
from __future__ import annotations

import re
import time

import numpy as np
import pytest

from recserve._core.cross import Crosser, FeatureSchema
from recserve.pipeline.errors import InvalidArgument
from recserve.pipeline.ranking import check_context_extra, context_vector
from recserve.pipeline.recommender import Recommender, RecRequest
from srvutil import ROOT


def _answer(rec, **kw):
    r = rec.recommend(RecRequest(k=20, **kw))
    return [i.item_id for i in r.items], [i.score for i in r.items]


def test_hour_and_weekday_default_to_the_timestamps_utc_ones(bundle):
    rec = Recommender(bundle, None)
    now = float(bundle.tables.meta("now"))
    for u in range(0, bundle.n_users, 15):
        uid = bundle.tables.id_of("user", u)
        for ts in (now + 3 * 3600.0, now + 4.5 * 86400.0):
            tm = time.gmtime(ts)
            assert _answer(rec, user_id=uid, timestamp=ts) == \
                _answer(rec, user_id=uid, timestamp=ts, hour=tm.tm_hour, weekday=tm.tm_wday)


def test_the_device_changes_no_score_of_a_bundle_trained_without_devices(bundle):
    rec = Recommender(bundle, None)
    now = float(bundle.tables.meta("now"))
    names = list(bundle.schema.names)
    assert "ctx.device" in names
    for u in range(0, bundle.n_users, 15):
        uid = bundle.tables.id_of("user", u)
        base = _answer(rec, user_id=uid, timestamp=now, device=0)
        for device in range(1, 5):
            got = _answer(rec, user_id=uid, timestamp=now, device=device)
            assert got[0] == base[0]
            np.testing.assert_array_equal(got[1], base[1])


def test_the_api_documents_utc_and_where_the_device_comes_from():
    proto = (ROOT / "proto" / "recserve" / "v1" / "recommender.proto").read_text()
    context = re.search(r"message Context \{(.*?)\n\}", proto, re.S).group(1)
    assert re.search(r"hour = 2;.*UTC", context) and re.search(r"weekday = 3;.*UTC", context)
    device_doc = context[:context.index("Device device = 4;")].rsplit(";", 1)[-1]
    assert "the interaction logs' device column" in device_doc and "changes none of its scores" in device_doc


def _with_region(schema: FeatureSchema) -> FeatureSchema:
    d = schema.to_dict()
    d.pop("feature_names")
    return FeatureSchema(**{**d, "context_columns": list(schema.context_columns) + ["region"]})


def test_a_context_column_the_request_does_not_give_is_missing_for_the_ranker():
    """A schema's context column other than hour, weekday and device is read from ``extra``; without it (or
    with a value that is not a number) it is NaN, which the crossing passes on as a missing value."""
    s = FeatureSchema(user_columns=["u"], item_columns=["i"], context_columns=["hour", "weekday", "device",
                                                                               "region"], sources=["a"])
    c = Crosser(s, np.zeros((3, 1), np.float32), np.zeros((3, 2), np.float32))
    for extra, region in ((None, np.nan), ({"region": "lisbon"}, np.nan), ({"region": "2"}, 2.0)):
        ctx = context_vector(s, 10.0, 2.0, 1.0, extra)
        np.testing.assert_array_equal(ctx, np.array([10, 2, 1, region], np.float32))
        X = c.cross([1.0], [0.0, 0.0], [0, 1], ctx, np.zeros((2, 1), np.int32), np.zeros((2, 1)), 100.0)
        np.testing.assert_array_equal(X[:, s.names.index("ctx.region")], [region, region])


@pytest.mark.parametrize("value", ["inf", "-Infinity", "nan", "1e39", "-3.5e38"])
def test_a_non_finite_context_value_is_an_invalid_argument(bundle, value):
    """A number the ranker would read that float32 cannot hold is refused at validation, naming the field
    (a gRPC client gets INVALID_ARGUMENT, not the crossing's error as INTERNAL); keys the ranker does not
    read stay free text."""
    rec = Recommender(bundle, None)
    assert "region" not in bundle.schema.context_columns
    assert _answer(rec, extra={"region": value}) == _answer(rec)
    rec.schema = _with_region(bundle.schema)
    with pytest.raises(InvalidArgument, match=r"^context\.extra\['region'\]: must be a finite float32"):
        rec.recommend(RecRequest(k=20, extra={"region": value}))
    check_context_extra(rec.schema, {"region": "3.4e38", "hour": value, "note": value})


def test_a_context_value_in_float32_range_is_accepted():
    s = _with_region(FeatureSchema(["u"], ["i"], ["hour"], ["a"]))
    for value in ("0", "-2.5", "3.4e38", "1e-50", "lisbon", ""):
        check_context_extra(s, {"region": value})
        assert np.isfinite(context_vector(s, 1.0, 2.0, 0.0, {"region": value})[1]) or \
            value in ("lisbon", "")


@pytest.mark.parametrize("after, seeds", [
    (50.0, [8, 7, 4, 3]),               # within the session gap of her newest event: one session
    (86_400.0, [8, 7]),                 # a day after it: the request's session alone
    (-30 * 86_400.0, [8, 7]),           # 30 days before it (a replay): alone too; was [8, 7, 4, 3]
    (-10.0, [8, 7, 4, 3]),              # just before it (an event dated a little ahead): one session
])
def test_the_requests_session_is_split_from_her_history_by_its_distance_in_time(after, seeds):
    """The request's session is appended to her history at the request's time; dated before her newest
    event, the negative gap split nothing, and the session source was seeded by her last session too."""
    import numpy as np

    from recserve._core.history import history_seeds
    from recserve.pipeline.recommender import session_seed_times

    rows = np.array([1, 2, 3, 4, 7, 8], np.int32)
    newest = 1e6 + 50
    ts = np.array([0.0, 100.0, 1e6, newest, newest + after, newest + after])
    assert history_seeds(rows, session_seed_times(ts, 2), 10, 10, 1800.0)[2].tolist() == seeds


def test_a_request_dated_before_her_newest_event_seeds_its_session_alone(bundle, facts, monkeypatch):
    """The pipeline passes the session split's times to the candidate sources (not the raw ones)."""
    import recserve.pipeline.recommender as R

    seen = []
    real = R.CC.source_lists

    def recorded(rows, ts, *a, **kw):
        seen.append(np.asarray(ts).copy())
        return real(rows, ts, *a, **kw)

    monkeypatch.setattr(R.CC, "source_lists", recorded)
    rec = Recommender(bundle, None, None)
    _, _, h_ts, _ = rec.histories.of(facts["user"], bundle.tables.row_of("user", facts["user"]))
    past = float(h_ts.max()) - 30 * 86_400.0
    rec.recommend(RecRequest(user_id=facts["user"], k=5, timestamp=past, session_item_ids=[facts["items"][0]]))
    (ts,) = seen
    assert ts[-1] == h_ts.max() + 30 * 86_400.0 and (np.diff(ts) >= 0).all()
