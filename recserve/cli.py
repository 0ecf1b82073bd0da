"""``recserve``: serve a bundle, or talk to a running server.

    recserve serve --bundle DIR [--port 50051] [--workers N] [--config FILE] [...]
    recserve recommend USER [--k 10] [--category C] [--session ITEM ...] [--explain] [--addr HOST:PORT]
    recserve similar ITEM [--k 10]
    recserve events record USER ITEM [--type click] [--timestamp T]
    recserve items update ITEM [--in-stock | --out-of-stock] [--price P]
    recserve health
    recserve store stats|prune|forget|clear-items --bundle ROOT | --events-dir DIR   (server running or not)

Client commands read ``--addr`` (env RECSERVE_ADDR, default 127.0.0.1:50051) and ``--token`` (env
RECSERVE_TOKEN) and print readable tables; a failed call prints its status code and exits 1.
"""
from __future__ import annotations

import argparse
import os
import sys
import unicodedata

from recserve import config as C
from recserve.cliparser import Parser, reason
from recserve.pipeline.messages import DEVICES
from recserve.storetool import cmd_store


# shown as escapes: control, format (bidi, zero-width), separator, surrogate and unassigned characters,
# which a terminal runs, hides, breaks the line at or draws at a width no one knows
_ESCAPED = {"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"}


def shown(text: str) -> str:
    """``text`` as a terminal line may carry it: each control, bidi, zero-width or line-breaking character as
    a Python escape (``\\u200b``), so a server's string cannot hide itself, reorder its line or break the
    table."""
    if text.isprintable():
        return text
    return "".join(c if c == " " or unicodedata.category(c) not in _ESCAPED else
                   f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}" if ord(c) < 0x10000 else
                   f"\\U{ord(c):08x}" for c in text)


def width(text: str) -> int:
    """Terminal columns of :func:`shown` text: 2 for a wide or full-width East Asian character (CJK, most
    emoji), 0 for a combining mark, 1 for any other."""
    if text.isascii():
        return len(text)
    return sum(0 if unicodedata.category(c) in ("Mn", "Me") else 2 if unicodedata.east_asian_width(c) in "WF"
               else 1 for c in text)


def _table(headers: list[str], rows: list[list]) -> str:
    """Columns padded to their widest cell in terminal columns. Cells are whole, however long: an id is
    copied from here into --exclude, --session or similar."""
    cells = [[str(h) for h in headers]] + [[f"{v:.4f}" if isinstance(v, float) else shown(str(v)) for v in r]
                                          for r in rows]
    widths = [max(width(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c + " " * (w - width(c)) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


def _bad_argument(message: str):
    """A client argument that cannot work: one line and exit 2, as argparse's own checks."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _channel(args):
    import grpc

    if bool(args.cert) != bool(args.key):
        _bad_argument("--cert and --key go together (the client certificate for mutual TLS)")
    if args.ca or args.cert:
        def read(flag, path):
            if not path:
                return None
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
            except OSError as exc:
                _bad_argument(f"{flag} {path}: {exc.strerror}")
            if b"-----BEGIN " not in data:       # gRPC would only log its failure, then fail each call
                _bad_argument(f"{flag} {path}: not a PEM file")
            return data

        ca, key, cert = read("--ca", args.ca), read("--key", args.key), read("--cert", args.cert)
        _check_client_tls(args)
        creds = grpc.ssl_channel_credentials(ca, key, cert)
        return grpc.secure_channel(args.addr, creds)
    return grpc.insecure_channel(args.addr)


def _check_client_tls(args) -> None:
    """Load the files as a TLS client would: gRPC only logs a key of another kind or a CA file without a
    certificate, then fails the call as UNAVAILABLE."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if args.cert:
            C.load_key_pair(ctx, args.cert, args.key, "--cert / --key")
        if args.ca:
            C.load_ca(ctx, args.ca, "--ca")
    except ValueError as exc:
        _bad_argument(str(exc))


def address(text: str) -> str:
    """``HOST:PORT`` with a port in 1..65535 (gRPC would wrap 116587 around to 51051)."""
    scheme, sep, rest = text.partition("://")
    if sep and scheme.replace("+", "").isalpha():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not a URL: {rest.rstrip('/')!r} for {text!r}")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port in 1..65535, got {text!r}")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise argparse.ArgumentTypeError(f"an IPv6 address goes in brackets: [{host}]:{port}, got {text!r}")
    return text


def decimal(text: str) -> float:
    """A decimal number in ASCII digits, as the serve settings take (not ``1_0``, ``0x10`` or ``٣``, which
    ``float`` reads); ``inf`` and ``nan`` are read, and the server says where they are refused."""
    try:
        return C.number(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a decimal number, got {text!r}") from None


def seconds(text: str) -> float:
    try:
        v = C.number(text)
    except ValueError:
        v = float("nan")
    if not 0 < v < 1e6:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0 and below 1000000, got {text!r}")
    return v


def int32(text: str) -> int:
    """A whole number the request's int32 field can carry (the server says whether it is in range)."""
    try:
        v = C.integer(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not -(1 << 31) <= v < 1 << 31:
        raise argparse.ArgumentTypeError(f"expected a number below 2^31, got {text!r}")
    return v


def _meta(args):
    """The call's metadata: the bearer token, when there is one and a gRPC header can carry it; a bad
    argument otherwise."""
    if not args.token:
        return None
    if (bad := C.token_fault(args.token)) is not None:
        _bad_argument(f"--token (or RECSERVE_TOKEN): a token is printable ASCII without spaces (a gRPC header "
                      f"cannot carry {bad!r})")
    return [("authorization", f"Bearer {args.token}")]


def _filters(args):
    from recserve.v1 import recommender_pb2 as pb

    f = pb.Filters(include_categories=args.category or [], exclude_item_ids=args.exclude or [])
    if args.min_price is not None:
        f.min_price = args.min_price
    if args.max_price is not None:
        f.max_price = args.max_price
    if args.any_stock:
        f.in_stock_only = False
    return f


def print_items(items, explain: bool = False, out=sys.stdout) -> None:
    rows = []
    for i, it in enumerate(items, 1):
        r = [i, it.item_id, float(it.score), ",".join(it.sources)]
        if explain:
            feats = "; ".join(f"{c.feature}={c.contribution:+.3f}" for c in it.explanation.top_features[:3])
            r += [float(it.explanation.mmr_penalty), feats]
        rows.append(r)
    headers = ["#", "item", "score", "sources"] + (["mmr_penalty", "top features"] if explain else [])
    print(_table(headers, rows), file=out)


def _not_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:      # undecodable bytes of argv arrive as lone surrogates
        return True
    return False


def cmd_serve(args) -> int:
    from recserve.server import serve_forever, worker_cpus

    flags = {k: v for k, v in vars(args).items() if k in {f for f in C.ServeConfig.__dataclass_fields__}}
    try:
        cfg = C.validate(C.load(flags, file=args.config))   # the bundle is checked in create_server
        try:
            worker_cpus(cfg.cpu_affinity, cfg.workers)
        except ValueError as exc:
            where = C.origin(cfg, "cpu_affinity")
            raise ValueError(f"{exc} (from {where})" if where != "default" else str(exc)) from None
    except (OSError, ValueError) as exc:
        print(f"recserve serve: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(C.describe(cfg), end="")
        return 0
    if not cfg.bundle:
        print("recserve serve: --bundle DIR is required (or RECSERVE_BUNDLE / the config file)", file=sys.stderr)
        return 2
    try:
        return serve_forever(cfg)
    except ValueError as exc:           # a bad bundle or setting (BundleError is one)
        print(f"recserve serve: {exc}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as exc:  # the port is taken, a worker could not start
        print(f"recserve serve: {reason(exc)}", file=sys.stderr)
        return 1


def _call(fn, args=None):
    import grpc

    try:
        return fn()
    except grpc.RpcError as e:
        hint = ""
        if e.code() == grpc.StatusCode.UNAVAILABLE and args is not None and "Socket closed" in (e.details() or ""):
            hint = (" (if the server uses TLS, pass its CA certificate with --ca)" if not args.ca else
                    " (if the server asks for client certificates, pass --cert and --key)" if not args.cert
                    else "")
        print(f"error: {e.code().name}: {e.details()}{hint}", file=sys.stderr)
        raise SystemExit(1)


def cmd_recommend(args) -> int:
    from recserve.v1 import recommender_pb2 as pb
    from recserve.v1 import recommender_pb2_grpc as pbg

    with _channel(args) as ch:
        req = pb.RecommendRequest(user_id=args.user, k=args.k, session_item_ids=args.session or [],
                                  filters=_filters(args), explain=args.explain, timings=True)
        if args.mmr_lambda is not None:
            setattr(req.diversity, "lambda", args.mmr_lambda)
        if args.device:
            req.context.device = DEVICES.index(args.device)
        req.context.timestamp = args.at
        req.context.country = args.country
        r = _call(lambda: pbg.RecommenderStub(ch).Recommend(req, metadata=_meta(args), timeout=args.timeout),
                  args)
    cold = (f" (cold start, trending in {r.trending_country})" if r.trending_country
            else " (cold start)" if r.cold_start else "")
    print(shown(f"user {args.user or '(anonymous)'}{cold}  bundle {r.bundle_version}  request {r.request_id}"))
    print_items(r.items, args.explain)
    print("timings: " + "  ".join(f"{t.stage}={t.ms:.2f}ms" for t in r.timings))
    return 0


def cmd_similar(args) -> int:
    from recserve.v1 import recommender_pb2 as pb
    from recserve.v1 import recommender_pb2_grpc as pbg

    with _channel(args) as ch:
        r = _call(lambda: pbg.RecommenderStub(ch).SimilarItems(
            pb.SimilarItemsRequest(item_id=args.item, k=args.k, filters=_filters(args)),
            metadata=_meta(args), timeout=args.timeout), args)
    print(shown(f"similar to {args.item}  bundle {r.bundle_version}  request {r.request_id}"))
    print_items(r.items)
    return 0


EVENT_TYPES = {"view": 1, "click": 2, "cart": 3, "purchase": 4, "rating": 5}


def cmd_events(args) -> int:
    from recserve.v1 import recommender_pb2 as pb
    from recserve.v1 import recommender_pb2_grpc as pbg

    with _channel(args) as ch:
        ev = pb.Event(user_id=args.user, item_id=args.item, type=EVENT_TYPES[args.type], timestamp=args.timestamp)
        r = _call(lambda: pbg.RecommenderStub(ch).RecordEvents(pb.RecordEventsRequest(events=[ev]),
                                                               metadata=_meta(args), timeout=args.timeout), args)
    print(_table(["accepted", "duplicates", "not kept", "new users", "request"],
                 [[r.accepted, r.duplicates, r.not_kept, r.new_users, r.request_id]]))
    return 0


def cmd_items(args) -> int:
    from recserve.v1 import recommender_pb2 as pb
    from recserve.v1 import recommender_pb2_grpc as pbg

    u = pb.ItemUpdate(item_id=args.item)
    if args.in_stock is not None:
        u.in_stock = args.in_stock
    if args.price is not None:
        u.price = args.price
    with _channel(args) as ch:
        r = _call(lambda: pbg.RecommenderStub(ch).UpdateItems(pb.UpdateItemsRequest(items=[u]),
                                                              metadata=_meta(args), timeout=args.timeout), args)
    print(_table(["updated", "request"], [[r.updated, r.request_id]]))
    return 0


def cmd_health(args) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    # no token: the health service is open, and a probe must not fail on a token it never needed
    with _channel(args) as ch:
        r = _call(lambda: health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""),
                                                                timeout=args.timeout), args)
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
    print(name)
    return 0 if name == "SERVING" else 1


def days(text: str) -> float:
    try:
        v = C.number(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= v <= 1e6:
        raise argparse.ArgumentTypeError(f"must be in [0, 1e6] days, got {text}")
    return v


def positive(text: str) -> int:
    v = int32(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return v


def _with_defaults(parser: argparse.ArgumentParser) -> None:
    """Each serve flag's help names its built-in default (from :class:`ServeConfig`) unless it says one;
    settings with no built-in default come from the bundle."""
    from recserve.config import ServeConfig

    base = ServeConfig()
    for action in parser._actions:
        if not hasattr(base, action.dest) or "(default" in (action.help or ""):
            continue
        value = getattr(base, action.dest)
        said = "the bundle's" if value is None else ("none" if value == "" else str(value))
        action.help = f"{action.help} (default: {said})" if action.help else f"default: {said}"


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="recserve", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="serve a bundle directory",
                       epilog="Every setting is also the variable RECSERVE_<NAME> (--max-per-creator: "
                              "RECSERVE_MAX_PER_CREATOR) and the key <name> of the --config TOML file; flags > "
                              "RECSERVE_* > file > the bundle's defaults. --print-config shows what is in effect.")
    s.add_argument("--bundle", help="bundle root (holding CURRENT) or one bundle version directory")
    s.add_argument("--config", help="TOML file (default: RECSERVE_CONFIG, else none); flags > RECSERVE_* env > "
                                    "file > bundle defaults")
    s.add_argument("--print-config", dest="print_config", action="store_true",
                   help="check the settings, print those in effect with where each came from, and exit")
    s.add_argument("--host", help="address to listen on (0.0.0.0 for every interface)")
    s.add_argument("--port", type=C.integer, help="gRPC port (0: a free one, printed)")
    s.add_argument("--workers", type=C.integer, help="worker processes sharing the port (0: serve in this one process, "
                                                "no supervisor, for debugging)")
    s.add_argument("--threads", type=C.integer,
                   help="threads per worker for event-store writes (bundle loads have their own)")
    s.add_argument("--cpu-affinity", dest="cpu_affinity",
                   help="auto (default: worker i on the i-th CPU when workers <= CPUs), off, or a list 0,1")
    s.add_argument("--max-concurrent-rpcs", dest="max_concurrent_rpcs", type=C.integer,
                   help="calls in flight per worker, reads and writes bounded apart; beyond it RESOURCE_EXHAUSTED")
    s.add_argument("--max-health-watches", dest="max_health_watches", type=C.integer,
                   help="open health Watch streams per worker; beyond it RESOURCE_EXHAUSTED")
    s.add_argument("--max-message-bytes", dest="max_message_bytes", type=C.integer,
                   help="largest request or response message")
    s.add_argument("--share-work", dest="share_work", type=C.integer, choices=[0, 1],
                   help="1 (default): a Recommend that would wait for its busy worker runs on an idle "
                        "sibling worker; 0: each worker computes its own calls")
    s.add_argument("--reload-interval", dest="reload_interval", type=C.number,
                   help="seconds between polls of CURRENT; 0 turns hot reload off (SIGHUP still reloads)")
    s.add_argument("--grace", type=C.number, help="seconds in-flight calls get to finish after SIGTERM")
    s.add_argument("--drain-delay", dest="drain_delay", type=C.number,
                   help="seconds to keep serving after SIGTERM with health NOT_SERVING, before new calls "
                        "are refused (default 0)")
    s.add_argument("--events-dir", dest="events_dir",
                   help="the real-time event store's directory (default: <bundle root>/events)")
    s.add_argument("--events-per-user", dest="events_per_user", type=C.integer,
                   help="real-time events kept per user, the oldest dropped beyond it (default 1000; keep it "
                        "at or above the bundles' history_len)")
    s.add_argument("--events-map-mb", dest="events_map_mb", type=C.integer,
                   help="the event store's LMDB map size in MiB (address space; the file grows as used); "
                        "the same in every process that opens the store")
    s.add_argument("--tls-cert", dest="tls_cert", help="PEM certificate chain: turns on TLS, with --tls-key")
    s.add_argument("--tls-key", dest="tls_key", help="PEM private key of --tls-cert")
    s.add_argument("--tls-client-ca", "--client-ca", dest="tls_client_ca",
                   help="CA of the client certificates: turns on mutual TLS")
    s.add_argument("--tokens-file", dest="tokens_file",
                   help="bearer tokens, one 'read|write TOKEN' per line (default: no auth)")
    s.add_argument("--metrics-port", dest="metrics_port", type=C.integer,
                   help="Prometheus metrics port (0: no metrics endpoint)")
    s.add_argument("--log-level", dest="log_level", help="DEBUG, INFO, WARNING, ERROR or CRITICAL")
    s.add_argument("--mmr-lambda", dest="mmr_lambda", type=C.number,
                   help="default MMR relevance weight in [0, 1] of calls that do not set one")
    s.add_argument("--max-per-creator", dest="max_per_creator", type=C.integer,
                   help="default cap of items per creator in one answer (0: no cap)")
    s.add_argument("--novelty-boost", dest="novelty_boost", type=C.number,
                   help="added to the [0, 1] relevance of items created within --new-item-days (default: the "
                        "bundle's, off unless it sets one)")
    s.add_argument("--new-item-days", dest="new_item_days", type=C.number,
                   help="an item counts as new for this many days after its created_at")
    s.add_argument("--candidates", type=C.integer,
                   help="candidates ranked per request (the bundle's source quotas scaled to sum to it)")
    s.add_argument("--cap", type=C.integer,
                   help="at most this many merged candidates ranked per request, the bundle's source quotas "
                        "unchanged (--candidates sets it too; of the two, the one set at the higher level wins)")
    s.add_argument("--ef", type=C.integer, help="HNSW search breadth of Recommend (default: the bundle's tuned ef)")
    s.add_argument("--similar-ef", dest="similar_ef", type=C.integer,
                   help="HNSW search breadth of SimilarItems (default: the bundle's tuned similar_ef)")
    s.add_argument("--ranker-engine", dest="ranker_engine", choices=["forest", "lightgbm"],
                   help="ranker evaluator: the Cython forest or LightGBM's Booster.predict (default: the bundle's, "
                        "the forest unless it sets one)")
    s.add_argument("--cold-order", dest="cold_order", choices=list(C.COLD_ORDERS),
                   help="order of a cold request's answer (no history, no session): the trending score "
                        "(the bundle's default) or the ranker")
    s.add_argument("--cold-trending", dest="cold_trending", choices=list(C.COLD_TRENDINGS),
                   help="a cold request's trending list in trending order: its country's (context.country, else "
                        "the user's; the default, where the bundle has one) or the global one")
    _with_defaults(s)
    s.set_defaults(fn=cmd_serve)

    def client(name, fn, help):
        p = sub.add_parser(name, help=help)
        p.add_argument("--addr", type=address, help="server HOST:PORT (env RECSERVE_ADDR; default 127.0.0.1:50051)")
        p.add_argument("--token", help="bearer token (env RECSERVE_TOKEN)")
        p.add_argument("--ca", help="CA certificate for TLS")
        p.add_argument("--cert", help="client certificate (mutual TLS), with --key")
        p.add_argument("--key", help="client private key (mutual TLS)")
        p.add_argument("--timeout", type=seconds, default=10.0,
                       help="deadline of the call, seconds (default 10; above 0, below 1000000)")
        p.set_defaults(fn=fn)
        return p

    def filters(p):
        p.add_argument("--k", type=positive, default=10, help="items to return (default 10)")
        p.add_argument("--category", action="extend", nargs="+", metavar="NAME",
                       help="only these categories (one or more names; the flag may repeat)")
        p.add_argument("--exclude", action="extend", nargs="+", metavar="ITEM",
                       help="never these items (one or more ids; ids the bundle does not know are ignored)")
        p.add_argument("--min-price", dest="min_price", type=decimal)
        p.add_argument("--max-price", dest="max_price", type=decimal)
        p.add_argument("--any-stock", dest="any_stock", action="store_true")

    p = client("recommend", cmd_recommend, "recommendations for a user ('' = anonymous)")
    p.add_argument("user")
    filters(p)
    p.add_argument("--session", action="extend", nargs="+", metavar="ITEM",
                   help="this visit's items, oldest first (one or more ids; unknown ids are ignored)")
    p.add_argument("--explain", action="store_true")
    p.add_argument("--mmr-lambda", dest="mmr_lambda", type=decimal)
    p.add_argument("--device", choices=list(DEVICES[1:]), help="the request's device (context)")
    p.add_argument("--at", type=decimal, default=0.0, metavar="UNIX_SECONDS",
                   help="the request's time (context: hour, weekday, releases); default: the server's clock")
    p.add_argument("--country", default="", help="the request's country (context: a cold request's trending list)")
    p = client("similar", cmd_similar, "items similar to an item")
    p.add_argument("item")
    filters(p)
    p = client("events", cmd_events, "record an event")
    p.add_argument("action", choices=["record"])
    p.add_argument("user")
    p.add_argument("item")
    p.add_argument("--type", choices=list(EVENT_TYPES), default="click")
    p.add_argument("--timestamp", type=decimal, default=0.0)
    p = client("items", cmd_items, "update an item's stock or price")
    p.add_argument("action", choices=["update"])
    p.add_argument("item")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--in-stock", dest="in_stock", action="store_const", const=True)
    g.add_argument("--out-of-stock", dest="in_stock", action="store_const", const=False)
    p.add_argument("--price", type=decimal)
    client("health", cmd_health, "the server's health status")
    p = sub.add_parser("store", help="the real-time event store: stats, prune old events, forget users, "
                                     "clear item states")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help in [("stats", "events, users and items the store holds"),
                       ("prune", "delete events older than --older-than-days, and users left with none"),
                       ("forget", "delete everything the store keeps about the users named"),
                       ("clear-items", "delete the stock and price UpdateItems set, of the items named or --all")]:
        a = actions.add_parser(name, help=help)
        a.add_argument("--bundle", help="bundle root: the store is <root>/events unless --events-dir says")
        a.add_argument("--events-dir", dest="events_dir", help="the event store's directory")
        a.add_argument("--config", help="the server's TOML file, read for bundle and events_dir")
        a.set_defaults(fn=cmd_store)
        if name == "prune":
            a.add_argument("--older-than-days", dest="older_than_days", type=days, required=True,
                           help="delete events with a timestamp more than this many days ago")
            a.add_argument("--batch", type=positive, default=10_000,
                           help="deletions per write transaction (the server's writes wait for one)")
        if name == "forget":
            a.add_argument("users", nargs="+", help="user ids")
        if name == "clear-items":
            a.add_argument("items", nargs="*", help="item ids")
            a.add_argument("--all", action="store_true", help="every item's state")
    return ap


# arguments that travel as protobuf strings or LMDB keys: UTF-8 only (a file name may be any bytes)
TEXT_ARGS = ("user", "item", "session", "category", "exclude", "token", "users", "items", "country")


def _client_env(args) -> str | None:
    """Fill a client command's ``--addr`` and ``--token`` from RECSERVE_ADDR and RECSERVE_TOKEN where not given
    (an empty or blank variable counts as unset, blanks around a value are dropped); the reason when the
    environment holds a RECSERVE_* typo or an address that cannot be one."""
    try:
        C.check_env(os.environ)
    except ValueError as exc:
        return str(exc)
    if args.addr is None:
        try:
            args.addr = address(C.env_value(os.environ, "RECSERVE_ADDR") or "127.0.0.1:50051")
        except argparse.ArgumentTypeError as exc:
            return f"environment RECSERVE_ADDR: {exc}"
    if args.token is None:
        args.token = C.env_value(os.environ, "RECSERVE_TOKEN")
    return None


def main(argv=None) -> int:
    # gRPC core writes its own plain-text lines to stderr (a failed TLS handshake is one per connection at
    # its default level): errors only, unless the operator sets GRPC_VERBOSITY; read when grpc loads
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    args = build_parser().parse_args(argv)
    for name in TEXT_ARGS:
        values = getattr(args, name, None)
        for v in values if isinstance(values, list) else [values]:
            if isinstance(v, str) and not v.isprintable() and _not_utf8(v):
                print(f"recserve: {name} {os.fsencode(v)[:60]!r} is not valid UTF-8", file=sys.stderr)
                return 2
    for name in ("session", "exclude", "category"):
        for v in getattr(args, name, None) or []:
            if "," in v:        # an id may hold a comma: said, not split
                print(f"note: --{name} {v!r} is one id; give several as --{name} A B", file=sys.stderr)
    if hasattr(args, "addr") and (bad := _client_env(args)):
        print(f"recserve {args.cmd}: {bad}", file=sys.stderr)
        return 2
    try:
        return args.fn(args)
    except BrokenPipeError:             # the reader went away (`recserve recommend u1 | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:           # Ctrl-C while a client command waits on the server
        print("recserve: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
