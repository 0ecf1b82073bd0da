"""The request context as the ranker sees it: hour and weekday in UTC (from the timestamp when not given,
as the trainer reads them from the logs), and a device that changes no score (the logs carry none, so the
ranker was trained with the unspecified device only). The API's comments say both."""
from __future__ import annotations

import re
import time

import numpy as np

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


def test_the_device_changes_no_score(bundle):
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


def test_the_api_documents_utc_and_the_unused_device():
    proto = (ROOT / "proto" / "recserve" / "v1" / "recommender.proto").read_text()
    context = re.search(r"message Context \{(.*?)\n\}", proto, re.S).group(1)
    assert re.search(r"hour = 2;.*UTC", context) and re.search(r"weekday = 3;.*UTC", context)
    device_doc = context[:context.index("Device device = 4;")].rsplit(";", 1)[-1]
    assert "changes no score" in device_doc
