"""Every RPC's happy path and every bad input's status code, against a real 2-worker server."""
from __future__ import annotations

import time
import uuid

import grpc
import numpy as np
import pytest

from recserve.v1 import recommender_pb2 as pb


def code_of(fn, *a, **kw):
    with pytest.raises(grpc.RpcError) as e:
        fn(*a, timeout=10, **kw)
    return e.value.code(), e.value.details()


def test_recommend_known_user(server, facts):
    stub = server.stub()
    r = stub.Recommend(pb.RecommendRequest(user_id=facts["user"], k=15, explain=True, timings=True), timeout=10)
    ids = [i.item_id for i in r.items]
    assert len(ids) == 15 and len(set(ids)) == 15
    assert not set(ids) & facts["user_history"], "consumed items must be excluded by default"
    assert r.bundle_version == facts["version"] and r.request_id and not r.cold_start
    assert {t.stage for t in r.timings} >= {"candidates", "ranking", "rerank", "total"}
    valid = {"ann", "i2i", "session", "popular"}
    for it in r.items:
        assert it.sources and set(it.sources) <= valid
        assert it.explanation.top_features, "explain must carry ranker contributions"
        assert all(np.isfinite(c.contribution) for c in it.explanation.top_features)
    pens = [it.explanation.mmr_penalty for it in r.items]
    assert pens[0] == 0.0 and all(-1.0 - 1e-5 <= p <= 1.0 + 1e-5 for p in pens) and any(pens[1:]), pens
    assert all(0.0 <= it.explanation.relevance <= 1.0 for it in r.items)
    stock = dict(zip(facts["items"], facts["item_stock"]))
    assert all(stock[i] > 0.5 for i in ids), "in_stock_only defaults to true"
    # default k is 20; exclude_consumed=false may return history items
    assert len(stub.Recommend(pb.RecommendRequest(user_id=facts["user"]), timeout=10).items) == 20
    r2 = stub.Recommend(pb.RecommendRequest(user_id=facts["user"], k=50, exclude_consumed=False,
                                            diversity=pb.Diversity(**{"lambda": 1.0})), timeout=10)
    assert set(i.item_id for i in r2.items) & facts["user_history"]


def test_recommend_unknown_and_anonymous_users_get_cold_start(server, facts):
    """cold_start: nothing of the user to go on (no history, no session), whether or not the bundle knows
    her id."""
    stub = server.stub()
    assert facts["user_without_history"] is not None
    for uid in ("nobody-" + uuid.uuid4().hex, "", facts["user_without_history"]):
        r = stub.Recommend(pb.RecommendRequest(user_id=uid, k=10), timeout=10)
        assert r.cold_start and len(r.items) == 10, uid
        assert all(i.sources == ["popular"] for i in r.items), uid


def test_session_items_steer_and_are_excluded(server, facts):
    row = int(np.flatnonzero((facts["i2i_rows"] >= 0).sum(1) >= 20)[0])
    item = facts["items"][row]
    r = server.stub().Recommend(pb.RecommendRequest(k=10, session_item_ids=[item]), timeout=10)
    assert not r.cold_start
    assert item not in [i.item_id for i in r.items]
    assert any("session" in i.sources for i in r.items)


def test_filters_category_price_and_selective_fill(server, facts):
    stub = server.stub()
    cats, item_cat, price = facts["categories"], facts["item_cat"], facts["item_price"]
    stock = facts["item_stock"] > 0.5
    # the most selective category that still has >= 10 in-stock items
    sizes = [(int(((item_cat == c) & stock).sum()), c) for c in range(len(cats))]
    n, c = min((s for s in sizes if s[0] >= 10))
    r = stub.Recommend(pb.RecommendRequest(user_id=facts["user"], k=10, exclude_consumed=False,
                                           filters=pb.Filters(include_categories=[cats[c]])), timeout=10)
    rows = [facts["items"].index(i.item_id) for i in r.items]
    assert len(rows) == 10, f"a selective filter ({n} items) must still fill k"
    assert all(item_cat[x] == c for x in rows)
    lo, hi = np.percentile(price, [40, 60])
    r = stub.Recommend(pb.RecommendRequest(user_id=facts["user"], k=10, filters=pb.Filters(
        min_price=float(lo), max_price=float(hi), exclude_categories=[cats[0]])), timeout=10)
    rows = [facts["items"].index(i.item_id) for i in r.items]
    assert rows and all(lo - 1e-3 <= price[x] <= hi + 1e-3 and item_cat[x] != 0 for x in rows)
    excl = [i.item_id for i in r.items[:3]]
    r = stub.Recommend(pb.RecommendRequest(user_id=facts["user"], k=10, filters=pb.Filters(
        min_price=float(lo), max_price=float(hi), exclude_categories=[cats[0]], exclude_item_ids=excl)),
        timeout=10)
    assert not set(excl) & {i.item_id for i in r.items}


def test_a_category_named_twice_counts_once(server, facts):
    stub = server.stub()
    cat = facts["categories"][0]
    for user in (facts["user"], ""):
        once, twice = ([i.item_id for i in stub.Recommend(pb.RecommendRequest(
            user_id=user, k=20, filters=pb.Filters(include_categories=cats)), timeout=10).items]
            for cats in ([cat], [cat, cat, cat]))
        assert once == twice and once


def test_similar_items(server, facts):
    stub = server.stub()
    item = facts["items"][3]
    r = stub.SimilarItems(pb.SimilarItemsRequest(item_id=item, k=8), timeout=10)
    ids = [i.item_id for i in r.items]
    assert len(ids) == 8 and item not in ids and len(set(ids)) == 8
    scores = [i.score for i in r.items]
    assert scores == sorted(scores, reverse=True)
    i2i = {facts["items"][x] for x in facts["i2i_rows"][3] if x >= 0}
    assert i2i & set(ids), "i2i neighbours are blended in"
    code, details = code_of(stub.SimilarItems, pb.SimilarItemsRequest(item_id="no-such-item"))
    assert code == grpc.StatusCode.NOT_FOUND and "item_id" in details


@pytest.mark.parametrize("req, field", [
    (pb.RecommendRequest(k=501), "k"),
    (pb.RecommendRequest(k=-1), "k"),
    (pb.RecommendRequest(diversity=pb.Diversity(**{"lambda": 1.5})), "diversity.lambda"),
    (pb.RecommendRequest(diversity=pb.Diversity(**{"lambda": -0.1})), "diversity.lambda"),
    (pb.RecommendRequest(diversity=pb.Diversity(max_per_creator=-2)), "diversity.max_per_creator"),
    (pb.RecommendRequest(filters=pb.Filters(include_categories=["no-such-category"])),
     "filters.include_categories"),
    (pb.RecommendRequest(filters=pb.Filters(exclude_categories=["nope"])), "filters.exclude_categories"),
    (pb.RecommendRequest(filters=pb.Filters(min_price=10, max_price=1)), "filters.min_price"),
    (pb.RecommendRequest(filters=pb.Filters(min_price=-1)), "filters.min_price"),
    (pb.RecommendRequest(user_id="bad\x01id"), "user_id"),
    (pb.RecommendRequest(user_id="x" * 300), "user_id"),
    (pb.RecommendRequest(user_id="é" * 200), "user_id"),         # 200 characters, 400 bytes of UTF-8
    (pb.RecommendRequest(user_id="a\x85b"), "user_id"),          # a C1 control character
    (pb.RecommendRequest(user_id="   "), "user_id"),
    (pb.RecommendRequest(session_item_ids=[""]), "session_item_ids"),
    (pb.RecommendRequest(context=pb.Context(hour=24)), "context.hour"),
    (pb.RecommendRequest(context=pb.Context(weekday=7)), "context.weekday"),
    (pb.RecommendRequest(context=pb.Context(device=99)), "context.device"),
    (pb.RecommendRequest(context=pb.Context(device=-3)), "context.device"),
    (pb.RecommendRequest(context=pb.Context(country="P\x00L")), "context.country"),
    (pb.RecommendRequest(context=pb.Context(extra={f"k{i}": "v" for i in range(65)})), "context.extra"),
    (pb.RecommendRequest(context=pb.Context(extra={"": "v"})), "context.extra"),
    (pb.RecommendRequest(k=101, explain=True), "explain"),
    (pb.RecommendRequest(context=pb.Context(timestamp=-1)), "context.timestamp"),
    (pb.RecommendRequest(context=pb.Context(timestamp=1.7e12)), "context.timestamp"),   # milliseconds
    (pb.RecommendRequest(context=pb.Context(timestamp=1e17)), "context.timestamp"),
])
def test_recommend_bad_input(server, req, field):
    code, details = code_of(server.stub().Recommend, req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(field + ":"), details


def test_similar_bad_input(server, facts):
    stub = server.stub()
    for req, field in [(pb.SimilarItemsRequest(item_id=facts["items"][0], k=1000), "k"),
                       (pb.SimilarItemsRequest(item_id=""), "item_id"),
                       (pb.SimilarItemsRequest(item_id=facts["items"][0],
                                               filters=pb.Filters(include_categories=["zz"])),
                        "filters.include_categories")]:
        code, details = code_of(stub.SimilarItems, req)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(field), details


def _ev(user, item, t=pb.EVENT_TYPE_PURCHASE, ts=0.0):
    return pb.Event(user_id=user, item_id=item, type=t, timestamp=ts)


def test_record_events_bad_batches_write_nothing(server, facts):
    stub = server.stub()
    user = "new-" + uuid.uuid4().hex
    good = facts["items"][0]
    code, details = code_of(stub.RecordEvents, pb.RecordEventsRequest(
        events=[_ev(user, good), _ev(user, "ghost-1"), _ev(user, "ghost-2")]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "ghost-1" in details and "ghost-2" in details
    # nothing written: the user is still cold everywhere
    for _ in range(4):
        assert server.stub().Recommend(pb.RecommendRequest(user_id=user, k=5), timeout=10).cold_start
    for req, field in [(pb.RecordEventsRequest(), "events"),
                       (pb.RecordEventsRequest(events=[_ev(user, good)] * 1001), "events"),
                       (pb.RecordEventsRequest(events=[_ev(user, good, t=pb.EVENT_TYPE_UNSPECIFIED)]),
                        "events[0].type"),
                       (pb.RecordEventsRequest(events=[_ev("", good)]), "events[0].user_id"),
                       (pb.RecordEventsRequest(events=[_ev("é" * 256, good)]), "events[0].user_id"),
                       (pb.RecordEventsRequest(events=[_ev("😀" * 128, good)]), "events[0].user_id"),
                       (pb.RecordEventsRequest(events=[_ev(user, good, ts=-5)]), "events[0].timestamp"),
                       (pb.RecordEventsRequest(events=[_ev(user, good, ts=1.7e12)]),
                        "events[0].timestamp"),
                       (pb.RecordEventsRequest(events=[_ev(user, good), _ev(user, good, ts=time.time() + 2 * 86400)]),
                        "events[1].timestamp")]:       # two days ahead of the clock: would evict real events
        code, details = code_of(stub.RecordEvents, req)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(field), details
    code, details = code_of(stub.RecordEvents, pb.RecordEventsRequest(events=[_ev(user, good, ts=1e300)]))
    assert details.startswith("events[0].timestamp: 1e+300 is after the year 9999"), details   # not 301 digits


def test_a_retried_batch_counts_once_and_a_write_past_its_deadline_writes_nothing(server, shared_root, facts):
    """A client's retry of a batch (the same events) is kept once and the reply says so; a write whose
    deadline passes while it waits for the store (here: another process holds its write lock) is not
    committed, so the client's retry is the one that counts."""
    from recserve.events import EventStore

    stub = server.stub()
    user, late = "retry-" + uuid.uuid4().hex, "late-" + uuid.uuid4().hex
    ts = time.time() - 60
    batch = pb.RecordEventsRequest(events=[_ev(user, facts["items"][1], ts=ts), _ev(user, facts["items"][2], ts=ts)])
    r = stub.RecordEvents(batch, timeout=10)
    assert (r.accepted, r.duplicates, r.not_kept, r.new_users) == (2, 0, 0, 1)
    r = stub.RecordEvents(batch, timeout=10)
    assert (r.accepted, r.duplicates, r.not_kept, r.new_users) == (2, 2, 0, 0)

    batch = pb.RecordEventsRequest(events=[_ev(late, facts["items"][3], ts=ts)])
    store = EventStore(shared_root / "events", map_size=0)
    try:
        with store.env.begin(write=True):
            call = stub.RecordEvents.future(batch, timeout=0.5)
            assert call.exception(timeout=10).code() == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(1.0)                     # the server's write has the lock now, and gives up
    finally:
        store.close()
    r = stub.RecordEvents(batch, timeout=10)
    assert (r.accepted, r.duplicates, r.new_users) == (1, 0, 1), "the late write must not have been committed"


def test_read_your_writes_across_worker_processes(server, facts):
    """Write through one connection, read through fresh connections spread over both workers."""
    user = "rw-" + uuid.uuid4().hex
    item = facts["items"][5]
    neighbours = {facts["items"][x] for x in facts["i2i_rows"][5] if x >= 0}
    before = server.stub().Recommend(pb.RecommendRequest(user_id=user, k=10), timeout=10)
    assert before.cold_start
    r = server.stub().RecordEvents(pb.RecordEventsRequest(events=[_ev(user, item)]), timeout=10)
    assert r.accepted == 1 and r.new_users == 1
    workers = set()
    for _ in range(16):
        ch = server.channel()
        from recserve.v1 import recommender_pb2_grpc as pbg

        resp, call = pbg.RecommenderStub(ch).Recommend.with_call(
            pb.RecommendRequest(user_id=user, k=10, exclude_consumed=True), timeout=10)
        workers.add(dict(call.trailing_metadata())["recserve-worker"])
        ids = [i.item_id for i in resp.items]
        assert not resp.cold_start, "the event makes the user warm in every worker"
        assert item not in ids, "the consumed item is excluded in every worker"
        assert set(ids) & neighbours, "i2i neighbours of the new item appear"
        assert any("i2i" in i.sources for i in resp.items)
        ch.close()
    assert len(workers) == 2, f"requests should reach both workers, saw {workers}"
    # a second event moves the user vector: recommendations change
    other = facts["items"][50]
    first = [i.item_id for i in resp.items]
    server.stub().RecordEvents(pb.RecordEventsRequest(events=[_ev(user, other, ts=0)]), timeout=10)
    after = [i.item_id for i in server.stub().Recommend(pb.RecommendRequest(user_id=user, k=10), timeout=10).items]
    assert after != first and other not in after


def test_update_items_stock_and_price(server, facts):
    stub = server.stub()
    r = stub.SimilarItems(pb.SimilarItemsRequest(item_id=facts["items"][7], k=5), timeout=10)
    victim = r.items[0].item_id
    assert stub.UpdateItems(pb.UpdateItemsRequest(items=[pb.ItemUpdate(item_id=victim, in_stock=False)]),
                            timeout=10).updated == 1
    for _ in range(6):  # every worker sees it immediately
        ids = [i.item_id for i in server.stub().SimilarItems(
            pb.SimilarItemsRequest(item_id=facts["items"][7], k=5), timeout=10).items]
        assert victim not in ids
    ids = [i.item_id for i in stub.SimilarItems(pb.SimilarItemsRequest(
        item_id=facts["items"][7], k=5, filters=pb.Filters(in_stock_only=False)), timeout=10).items]
    assert victim in ids
    # price update moves the item out of a price range
    stub.UpdateItems(pb.UpdateItemsRequest(items=[pb.ItemUpdate(item_id=victim, in_stock=True, price=99999.0)]),
                     timeout=10)
    ids = [i.item_id for i in stub.SimilarItems(pb.SimilarItemsRequest(
        item_id=facts["items"][7], k=5, filters=pb.Filters(max_price=50000)), timeout=10).items]
    assert victim not in ids
    code, details = code_of(stub.UpdateItems,
                            pb.UpdateItemsRequest(items=[pb.ItemUpdate(item_id="ghost", in_stock=True)]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "ghost" in details
    code, details = code_of(stub.UpdateItems, pb.UpdateItemsRequest(
        items=[pb.ItemUpdate(item_id=victim, price=-3)]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("items[0].price")
    code, details = code_of(stub.UpdateItems, pb.UpdateItemsRequest(
        items=[pb.ItemUpdate(item_id=victim, price=1e300)]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("items[0].price"), details
    code, details = code_of(stub.UpdateItems, pb.UpdateItemsRequest(items=[pb.ItemUpdate(item_id=victim)]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("items[0]:"), details
    code, details = code_of(stub.UpdateItems, pb.UpdateItemsRequest(
        items=[pb.ItemUpdate(item_id=victim, in_stock=True)] * 1001))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("items:"), details


def test_message_size_limit(server):
    big = pb.RecommendRequest(session_item_ids=["x" * 200] * 30000)  # ~6 MB > 4 MB default
    code, _ = code_of(server.stub().Recommend, big)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("method", ["Recommend", "SimilarItems", "RecordEvents", "UpdateItems"])
@pytest.mark.parametrize("body", [b"\x0a\x02\xff\xfe", b"\xff\xff\xff"])   # text not UTF-8; not protobuf
def test_a_request_that_does_not_parse_is_invalid_argument(server, method, body):
    ch = server.channel()
    call = ch.unary_unary(f"/recserve.v1.Recommender/{method}")     # bytes in, bytes out
    code, details = code_of(call, body)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert details.startswith("the request is not a valid message") and "(request " in details, details
    ch.close()


def test_unknown_ids_are_counted_past_the_ones_named(server, facts):
    stub = server.stub()
    ghosts = [f"ghost-{k:02d}" for k in range(25)]
    code, details = code_of(stub.RecordEvents, pb.RecordEventsRequest(events=[_ev("someone", g) for g in ghosts * 2]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith("events.item_id: 25 unknown item id(s): ghost-00, ") and "ghost-19 and 5 more" in details
    assert "ghost-20" not in details, details
    code, details = code_of(stub.UpdateItems, pb.UpdateItemsRequest(
        items=[pb.ItemUpdate(item_id=g, in_stock=True) for g in ghosts[:3]]))
    assert details.startswith("items.item_id: 3 unknown item id(s): ghost-00, ghost-01, ghost-02 (request "), details


def test_messages_that_echo_long_input_stay_readable(server, facts):
    """An error that names what the request sent (unknown ids, category names) is cut to a size every
    client accepts: the caller sees INVALID_ARGUMENT naming the field, not a metadata-size failure."""
    stub = server.stub()
    ghosts = [f"{k:02d}" + "ż" * 127 for k in range(20)]           # 20 unknown ids of 256 bytes each
    code, details = code_of(stub.RecordEvents, pb.RecordEventsRequest(
        events=[_ev("someone", g) for g in ghosts]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("events.item_id:"), details
    assert ghosts[0] in details and len(details.encode()) < 1200 and "(request " in details
    for req in [pb.RecommendRequest(filters=pb.Filters(include_categories=["c" * 20_000])),
                pb.RecommendRequest(filters=pb.Filters(exclude_categories=["ü" * 20_000]))]:
        code, details = code_of(stub.Recommend, req)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("filters."), details
        assert len(details.encode()) < 1200
    code, details = code_of(stub.UpdateItems, pb.UpdateItemsRequest(
        items=[pb.ItemUpdate(item_id=g, in_stock=True) for g in ghosts]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("items.item_id:"), details
