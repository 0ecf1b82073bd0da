"""The gRPC servicer (grpc.aio): proto <-> pipeline dataclasses, and the one place mapping errors to status
codes."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
import uuid

import grpc

from recserve.config import debug_delay, token_fault
from recserve.events import Event
from recserve.groupcommit import GroupWriter
from recserve.pipeline.errors import DeadlineExceeded, InvalidArgument, NoBundle, NotFound
from recserve.pipeline.messages import (MAX_CONTEXT_EXTRA, MAX_LIST, Filters, RecRequest, check_batch,
                                        check_count)
from recserve.scheduling import CHEAP, HEAVY, ComputeSlot
from recserve.v1 import recommender_pb2 as pb
from recserve.v1 import recommender_pb2_grpc as pb_grpc

log = logging.getLogger("recserve.service")

# Test hook for drain tests: every Recommend sleeps this long (milliseconds). Unset in production.
DEBUG_DELAY_S = debug_delay(os.environ)     # a testing aid, checked by `recserve serve` and logged


MAX_DETAILS_BYTES = 1024     # a status message's UTF-8 bytes: it travels in a header a client caps (8 KiB)


def clip(msg: str, limit: int = MAX_DETAILS_BYTES) -> str:
    """``msg`` cut to ``limit`` bytes of UTF-8 (on a character boundary), saying so: a message that echoes
    the request (unknown ids, category names) must not outgrow the client's metadata limit, which would
    turn the status into RESOURCE_EXHAUSTED."""
    raw = msg.encode("utf-8", "backslashreplace")
    if len(raw) <= limit:
        return msg
    return raw[:limit - 40].decode("utf-8", "ignore") + f"... ({len(raw)} bytes, cut)"


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The one mapping from exceptions to gRPC status codes, with messages of at most
    :data:`MAX_DETAILS_BYTES`."""
    code, msg = _status_of(exc)
    return code, clip(msg)


def _status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    import lmdb

    from google.protobuf.message import DecodeError

    if isinstance(exc, InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, DecodeError):
        return grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid message: {exc}"
    if isinstance(exc, NotFound):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, DeadlineExceeded):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc)
    if isinstance(exc, NoBundle):
        return grpc.StatusCode.UNAVAILABLE, "no bundle is loaded yet"
    if isinstance(exc, Overloaded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"too many {exc.args[0]} in flight in this worker; retry later"
    if isinstance(exc, WritesStuck):
        return (grpc.StatusCode.UNAVAILABLE, f"{exc.args[0]} earlier writes of this worker, whose calls have "
                "ended, still wait for the event store (its write lock, held by the writes queued ahead of "
                "them or by another process such as `recserve store prune`, or a slow disk); retry later")
    if isinstance(exc, lmdb.MapFullError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, "the event store is full"
    if disk_fault(exc):
        return (grpc.StatusCode.UNAVAILABLE, f"the event store's disk failed ({exc}; full, or failing): nothing of "
                "this call was written; retry later")
    if isinstance(exc, ResponseTooLarge):
        size, limit = exc.args
        return (grpc.StatusCode.RESOURCE_EXHAUSTED, f"the response ({size} bytes) exceeds the server's message "
                f"size limit ({limit} bytes, --max-message-bytes): ask for fewer items or no explanation")
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__})"


def disk_fault(exc: BaseException) -> bool:
    """An event store write the disk refused: LMDB's ENOSPC (``DiskError``), or its plain ``Error`` for an
    errno such as EIO, which it gives for a short write on a full disk. The transaction was not committed."""
    import lmdb

    return isinstance(exc, lmdb.DiskError) or type(exc) is lmdb.Error


class Overloaded(Exception):
    """("reads" or "writes"): more calls of that kind in flight in this worker than its bound
    (``max_concurrent_rpcs``, for each kind apart)."""


class WritesStuck(Exception):
    """(n): a write refused because ``n`` orphaned writes (see :meth:`RecommenderService._orphan`) fill
    their bound."""


class ResponseTooLarge(Exception):
    """(size, limit): a response gRPC would refuse to send; refused here, so it is counted and says why."""


def _trailing(pid: str, rid: str, *extra: tuple[str, str]) -> tuple:
    """Every response's trailing metadata: the worker that answered and the request id (and ``extra``)."""
    return (("recserve-worker", pid), ("recserve-request-id", rid), *extra)


# each method's request and response messages (the service's descriptor is the one source)
_SERVICE = pb.DESCRIPTOR.services_by_name["Recommender"]
_MESSAGES = {m.name: (getattr(pb, m.input_type.name), getattr(pb, m.output_type.name)) for m in _SERVICE.methods}


def add_to_server(service, server) -> None:
    """Register ``service``'s methods on ``server`` with bytes in and out: the request handed over as it came,
    so that a request that does not parse is an ``INVALID_ARGUMENT`` of :func:`rpc` (counted, logged in one
    line, with a request id) and not gRPC's own ``UNKNOWN`` with a traceback; the response serialized by
    :func:`rpc`, which refuses one past the size limit the same way."""
    handlers = {name: grpc.unary_unary_rpc_method_handler(getattr(service, name)) for name in _MESSAGES}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE.full_name, handlers),))
    if hasattr(server, "add_registered_method_handlers"):       # grpcio >= 1.62: no generic lookup per call
        server.add_registered_method_handlers(_SERVICE.full_name, handlers)


WRITE_NAMES = frozenset(("RecordEvents", "UpdateItems"))


# A call cut off with at most this much of its deadline left here is taken to have run out of time: the
# server's deadline starts when the call reaches it, later than the client's, so the client's cancel at its
# own deadline can arrive while the server still has a little time left.
DEADLINE_SLACK_S = 0.1


def deadline_passed(left: float | None) -> bool:
    """Whether a call cut off with ``left`` seconds of its deadline remaining here (``time_remaining()``,
    None: no deadline) ended because its deadline passed, not because the client cancelled it."""
    return left is not None and left <= DEADLINE_SLACK_S


def rpc(method):
    """Every RPC: the request parsed and the response serialized (bytes both ways, see :func:`add_to_server`),
    a request id (in the response, the trailing metadata and any log line about the call), the worker's
    bounds on calls in flight (reads and writes apart: writes waiting for the event store never crowd out
    reads), errors mapped by :func:`status_of` (failed calls are logged, successful ones are not), metrics."""
    name = method.__name__
    parse = _MESSAGES[name][0].FromString
    write = name in WRITE_NAMES

    @functools.wraps(method)
    async def wrapper(self, request, context):
        t0 = time.perf_counter()
        code = grpc.StatusCode.OK
        rid = uuid.uuid4().hex
        context.set_trailing_metadata(_trailing(self.pid, rid))
        self.in_flight += 1
        self.writes_in_flight += write
        self.started += 1
        try:
            if write:
                if self.writes_in_flight > self.max_in_flight:
                    raise Overloaded("writes")
                if self.orphans >= self.max_orphans:
                    raise WritesStuck(self.orphans)
            elif self.in_flight - self.writes_in_flight > self.max_in_flight:
                raise Overloaded("reads")
            if isinstance(request, bytes):
                request = parse(request)
            out = await method(self, request, context, rid)
            return out if isinstance(out, bytes) else self._serialized(out)
        except asyncio.CancelledError:          # the client cancelled or its deadline passed: gRPC's doing
            late = deadline_passed(context.time_remaining())
            code = grpc.StatusCode.DEADLINE_EXCEEDED if late else grpc.StatusCode.CANCELLED
            why = ("the deadline passed" if late else "cut off by the shutdown's grace period"
                   if self.shutting_down else "cancelled by the client")
            log.info("%s: %s", name, why,
                     extra={"event": "rpc_failed", "request_id": rid, "method": name, "code": code.name})
            raise
        except Exception as exc:  # noqa: BLE001 -- mapped, never leaked
            code, msg = status_of(exc)
            extra = {"event": "rpc_failed", "request_id": rid, "method": name, "code": code.name}
            if code == grpc.StatusCode.INTERNAL:
                log.exception("internal error in %s", name, extra=extra)
            elif disk_fault(exc):               # the operator's to fix: logged as an error, without a traceback
                log.error("%s: %s", name, msg, extra=extra)
            else:
                log.info("%s: %s", name, msg, extra=extra)
            if code == grpc.StatusCode.DEADLINE_EXCEEDED and deadline_passed(context.time_remaining()):
                # gRPC ends the call at its deadline too: a status sent after it fails in gRPC core, which
                # logs that as an ERROR with a traceback. The client has its DEADLINE_EXCEEDED either way
                raise asyncio.CancelledError from None
            await context.abort(code, f"{msg} (request {rid})")
        finally:
            self.in_flight -= 1
            self.writes_in_flight -= write
            if self.metrics is not None:
                self.metrics.observe(name, code.name, time.perf_counter() - t0)
                self.metrics.settle(idle=self.in_flight == 0)

    return wrapper


def _deadline(context) -> float | None:
    """The client's deadline on the monotonic clock (None when it set none)."""
    left = context.time_remaining()
    return None if left is None or left > 1e9 else time.monotonic() + left


def _filters(f: pb.Filters) -> Filters:
    return Filters(
        include_categories=list(f.include_categories),
        exclude_categories=list(f.exclude_categories),
        min_price=f.min_price if f.HasField("min_price") else None,
        max_price=f.max_price if f.HasField("max_price") else None,
        exclude_item_ids=list(f.exclude_item_ids),
        in_stock_only=f.in_stock_only if f.HasField("in_stock_only") else True,
    )


def _check_counts(f: pb.Filters, request: pb.RecommendRequest | None = None) -> None:
    """The count limits, checked on the parsed message before its fields are copied: a 3.4 MB Recommend of
    250,000 ``context.extra`` entries took the worker's loop 75 ms to convert only to be refused."""
    check_count(len(f.include_categories), MAX_LIST, "filters.include_categories", "categories")
    check_count(len(f.exclude_categories), MAX_LIST, "filters.exclude_categories", "categories")
    check_count(len(f.exclude_item_ids), MAX_LIST, "filters.exclude_item_ids", "ids")
    if request is not None:
        check_count(len(request.session_item_ids), MAX_LIST, "session_item_ids", "ids")
        check_count(len(request.context.extra), MAX_CONTEXT_EXTRA, "context.extra", "entries")


def _rec_request(request: pb.RecommendRequest, deadline: float | None) -> RecRequest:
    _check_counts(request.filters, request)
    c, d = request.context, request.diversity
    return RecRequest(
        user_id=request.user_id, k=request.k, session_item_ids=list(request.session_item_ids),
        timestamp=c.timestamp, hour=c.hour if c.HasField("hour") else None,
        weekday=c.weekday if c.HasField("weekday") else None, device=int(c.device), country=c.country,
        extra=dict(c.extra), filters=_filters(request.filters),
        exclude_consumed=request.exclude_consumed if request.HasField("exclude_consumed") else True,
        mmr_lambda=d.__getattribute__("lambda") if d.HasField("lambda") else None,
        max_per_creator=d.max_per_creator if d.HasField("max_per_creator") else None,
        explain=request.explain, deadline=deadline)


def _add_items(repeated, result, explain: bool) -> None:
    """Append the result's items to a response's repeated ``items`` field (built in place, no copies)."""
    for it in result.items:
        m = repeated.add(item_id=it.item_id, score=it.score, sources=it.sources)
        if explain:
            e = m.explanation
            e.top_features.extend(pb.FeatureContribution(feature=f, contribution=c) for f, c in it.contributions)
            e.mmr_penalty, e.ranker_score, e.relevance = it.mmr_penalty, it.score, it.relevance


class RecommenderService(pb_grpc.RecommenderServicer):
    """Thin, on the worker's event loop: ``holder.current`` is the live pipeline (swapped whole on reload).

    Recommend and SimilarItems compute on the loop, one at a time, through the worker's
    :class:`ComputeSlot` (SimilarItems first; Recommend yields to it between its stages). RecordEvents and
    UpdateItems wait on the event store's fsync: they run in ``io`` (a thread pool) and do not take the slot.
    """

    def __init__(self, holder, metrics=None, io=None, max_in_flight: int = 64, sharing=None,
                 max_orphans: int = 4):
        """``max_in_flight`` bounds the reads in flight and, apart, the writes; ``max_orphans`` the writes
        whose calls have ended but which still wait to commit (the ``io`` pool's size: beyond it new writes
        would only queue behind them), past which new writes are refused (UNAVAILABLE)."""
        self.holder = holder
        self.metrics = metrics
        self.io = io
        self.group = GroupWriter(io)    # RecordEvents committed in groups (recserve.groupcommit)
        self.max_in_flight = max_in_flight
        self.max_orphans = max(max_orphans, 1)
        self.in_flight = 0              # calls in flight, reads and writes
        self.writes_in_flight = 0       # RecordEvents and UpdateItems among them
        self.orphans = 0                # writes whose call has ended, still running in ``io``
        self._orphans_done: asyncio.Event | None = None
        self.started = 0                # calls handed to a handler so far (the worker's drain watches it)
        self.shutting_down = False      # set by the worker's stop
        self.max_response_bytes = 0     # the server's send limit (0: none)
        self.sharing = sharing          # recserve.sharing.Sharing, or None: every call computes here
        self.slot = ComputeSlot(None if sharing is None else sharing.publish)
        self.pid = str(os.getpid())

    def _serialized(self, response) -> bytes:
        """The response's bytes, or :class:`ResponseTooLarge` past the server's send limit."""
        data = response.SerializeToString()
        if self.max_response_bytes and len(data) > self.max_response_bytes:
            raise ResponseTooLarge(len(data), self.max_response_bytes)
        return data

    @contextlib.contextmanager
    def _rec(self):
        """The live pipeline, leased for this request so a reload cannot close it underneath."""
        with self.holder.lease() as rec:
            if rec is None:
                raise NoBundle()
            yield rec

    async def compute_recommend(self, req: RecRequest, started=None, unless=None):
        """One Recommend through this worker's compute slot, yielding to cheaper calls between stages:
        the calls of this worker's clients and those its siblings forward (``recserve.sharing``).
        ``started()`` runs once it holds the slot; ``unless``: see :meth:`ComputeSlot.hold`."""
        async with self.slot.hold(HEAVY, req.deadline, unless) as pause:
            if started is not None:
                started()
            with self._rec() as rec:
                steps = rec.recommend_steps(req)
                while True:
                    try:
                        next(steps)
                    except StopIteration as done:
                        return done.value
                    await pause()

    @rpc
    async def Recommend(self, request, context, rid):
        deadline = _deadline(context)
        if DEBUG_DELAY_S:
            await asyncio.sleep(DEBUG_DELAY_S)
        req = _rec_request(request, deadline)
        if self.sharing is not None and self.slot.load():
            # it would wait here: an idle sibling may start it first (and computes it then)
            res, by = await self.sharing.forward(req, self.compute_recommend)
            if by is not None:
                context.set_trailing_metadata(_trailing(self.pid, rid, ("recserve-computed-by", str(by))))
                if self.metrics is not None:
                    self.metrics.forwarded.inc()
        else:
            res = await self.compute_recommend(req)
        resp = pb.RecommendResponse(bundle_version=res.bundle_version, request_id=rid,
                                    cold_start=res.cold_start, trending_country=res.trending_country)
        _add_items(resp.items, res, request.explain)
        if request.timings:
            resp.timings.extend(pb.StageTiming(stage=s, ms=ms) for s, ms in res.timings)
        data = self._serialized(resp)
        if self.metrics is not None:    # an answer sent: one refused past the size limit is not counted here
            self.metrics.observe_recommend(res.timings, res.source_counts, res.cold_list)
        return data

    @rpc
    async def SimilarItems(self, request, context, rid):
        _check_counts(request.filters)
        deadline = _deadline(context)
        async with self.slot.hold(CHEAP, deadline):
            with self._rec() as rec:
                res = rec.similar(request.item_id, request.k, _filters(request.filters), deadline)
            resp = pb.SimilarItemsResponse(bundle_version=res.bundle_version, request_id=rid)
            _add_items(resp.items, res, False)
            return resp

    async def _write(self, rid: str, work, late, submit=None):
        """``work(rec, abandoned)`` in ``io`` (or the future ``submit(rec, abandoned)`` gives: a group
        commit) on a lease of the live pipeline; its result. When the call
        ends first (its deadline passed, or the client cancelled) the write is orphaned: ``abandoned()``
        turns true, the call ends at once (it leaves the bound on calls in flight, its client is answered)
        and the write is tracked apart until its thread ends, keeping the lease; ``late(result, rec)`` then
        runs if it succeeded (it committed after its call ended)."""
        abandoned = threading.Event()

        def run(rec):
            if abandoned.is_set():      # orphaned before a thread took it: nothing to do
                raise DeadlineExceeded("write")
            return work(rec, abandoned.is_set)

        with contextlib.ExitStack() as lease:
            rec = lease.enter_context(self._rec())
            write = asyncio.wrap_future(submit(rec, abandoned.is_set)) if submit is not None else \
                asyncio.get_running_loop().run_in_executor(self.io, run, rec)
            try:
                return rec, await asyncio.shield(write)
            except asyncio.CancelledError:
                abandoned.set()
                self._orphan(write, lease.pop_all(), functools.partial(late, rec=rec), rid)
                raise

    def _orphan(self, write, lease, late, rid: str) -> None:
        """Track ``write``, whose call has ended, until its thread ends; then let the lease go and, if it
        succeeded, account for it with ``late(result)``."""
        self.orphans += 1

        def done(fut) -> None:
            self.orphans -= 1
            try:
                if not fut.cancelled() and fut.exception() is None:
                    late(fut.result())
            except Exception:  # noqa: BLE001 -- accounting must not leak the lease
                log.exception("accounting for a write whose call ended failed", extra={"request_id": rid})
            finally:
                lease.close()
                if self.orphans == 0 and self._orphans_done is not None:
                    self._orphans_done.set()

        write.add_done_callback(done)

    async def orphans_settled(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for the orphaned writes to end (the worker's stop); how many are
        left."""
        if self.orphans:
            self._orphans_done = asyncio.Event()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._orphans_done.wait(), max(timeout, 0))
        return self.orphans

    @rpc
    async def RecordEvents(self, request, context, rid):
        check_batch(len(request.events), "events", "events")
        events = []
        for i, e in enumerate(request.events):
            if e.type == pb.EVENT_TYPE_UNSPECIFIED:
                raise InvalidArgument(f"events[{i}].type", "must be set")
            events.append(Event(e.user_id, e.item_id, int(e.type) - 1, e.timestamp))
        deadline = _deadline(context)

        def late(done, rec):
            # the call ended while its write was already committing: what it kept is counted and said
            self._count_events(done, rec, events)
            log.info("RecordEvents: the call ended after its write committed (%d events kept)", done.kept,
                     extra={"event": "write_after_cancel", "request_id": rid})

        # a write whose call ends before it commits (waiting for the store's write lock) gives up; the
        # writes waiting meanwhile commit together
        rec, done = await self._write(rid, None, late,
                                      lambda rec, abandoned: self.group.submit(rec, events, deadline, abandoned))
        self._count_events(done, rec, events)
        return pb.RecordEventsResponse(request_id=rid, accepted=done.accepted, new_users=done.new_users,
                                       duplicates=done.duplicates, not_kept=done.not_kept)

    def _count_events(self, done, rec, events) -> None:
        if self.metrics is not None:
            self.metrics.events.inc(done.kept)
            # dated before the served bundle's data end, of a user it has a history of: taken to be in it, so
            # they exclude their items but the user vector does not read them (a client that back-dates
            # events sees it here); a retried repeat, kept once, is counted once
            end = rec.bundle.data_end
            repeats = set(done.repeats)
            early = sum(0 < e.timestamp < end and rec.has_history(e.user_id)
                        for i, e in enumerate(events) if i not in repeats)
            if early:
                self.metrics.events_before_data_end.inc(early)
            self.metrics.store_usage(*rec.store.usage())

    @rpc
    async def UpdateItems(self, request, context, rid):
        check_batch(len(request.items), "items", "updates")
        ups = [(u.item_id, u.in_stock if u.HasField("in_stock") else None,
                u.price if u.HasField("price") else None) for u in request.items]

        def late(updated, rec):
            if self.metrics is not None:
                self.metrics.store_usage(*rec.store.usage())
            log.info("UpdateItems: the call ended before its update was written (%d items updated)", updated,
                     extra={"event": "write_after_cancel", "request_id": rid})

        rec, updated = await self._write(rid, lambda rec, abandoned: rec.update_items(ups), late)
        if self.metrics is not None:
            self.metrics.store_usage(*rec.store.usage())
        return pb.UpdateItemsResponse(updated=updated, request_id=rid)


WRITE_METHODS = {"/recserve.v1.Recommender/RecordEvents", "/recserve.v1.Recommender/UpdateItems"}
OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


def load_tokens(path) -> dict[str, str]:
    """Token file: one ``read TOKEN`` or ``write TOKEN`` per line (write implies read). A line whose first
    character other than white space is ``#`` is a comment; a ``#`` inside a token is part of it."""
    tokens: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"tokens file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in ("read", "write"):
            raise ValueError(f"tokens file {path}:{n}: expected 'read TOKEN' or 'write TOKEN'")
        if (bad := token_fault(parts[1])) is not None:
            raise ValueError(f"tokens file {path}:{n}: a token is printable ASCII (a gRPC header cannot carry "
                             f"{bad!r}, so no client could send it)")
        if tokens.get(parts[1], parts[0]) != parts[0]:
            raise ValueError(f"tokens file {path}:{n}: this token is listed as both read and write")
        tokens[parts[1]] = parts[0]
    if not tokens:
        raise ValueError(f"tokens file {path}: no tokens (every call would be refused)")
    return tokens


SERVICE_PREFIX = "/recserve.v1.Recommender/"
METHOD_NAMES = frozenset(pb.DESCRIPTOR.services_by_name["Recommender"].methods_by_name)


def _abort_handler(code, msg, method: str, pid: str, metrics=None):
    """A call refused before its method runs: a request id and a log line as for any failed call, and
    counted under its method's name (``other`` for a name the service does not have: a client's
    made-up names must not add metric series)."""
    name = method[len(SERVICE_PREFIX):] if method.startswith(SERVICE_PREFIX) else ""
    name = name if name in METHOD_NAMES else "other"

    async def fn(request, context):
        rid = uuid.uuid4().hex
        context.set_trailing_metadata(_trailing(pid, rid))
        log.info("%s: %s", name, msg, extra={"event": "rpc_failed", "request_id": rid, "method": name,
                                            "code": code.name})
        if metrics is not None:
            metrics.observe(name, code.name, None)      # counted; no latency: nothing ran
            metrics.flush()
        await context.abort(code, f"{msg} (request {rid})")

    return grpc.unary_unary_rpc_method_handler(fn)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Bearer tokens: none/unknown -> UNAUTHENTICATED, a read token on a write method -> PERMISSION_DENIED.
    Rejected calls are counted in the request metrics like any other."""

    def __init__(self, tokens: dict[str, str], metrics=None):
        self.tokens = tokens
        self.metrics = metrics
        self.pid = str(os.getpid())

    async def intercept_service(self, continuation, details):
        method = details.method
        if method.startswith(OPEN_PREFIXES):
            return await continuation(details)
        auths = [v for k, v in details.invocation_metadata or () if k == "authorization"]
        if len(auths) > 1:          # which one would count is no client's business to guess
            return _abort_handler(grpc.StatusCode.UNAUTHENTICATED, "more than one authorization header", method,
                                  self.pid, self.metrics)
        auth = auths[0] if auths else ""
        scope = self.tokens.get(auth[7:]) if auth.lower().startswith("bearer ") else None
        if scope is None:
            return _abort_handler(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown bearer token", method,
                                  self.pid, self.metrics)
        if method in WRITE_METHODS and scope != "write":
            return _abort_handler(grpc.StatusCode.PERMISSION_DENIED, "this token may only read", method,
                                  self.pid, self.metrics)
        return await continuation(details)
