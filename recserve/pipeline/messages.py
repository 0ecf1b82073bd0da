"""What goes into and comes out of the pipeline: the request and result types (no gRPC in them) and the
checks of request fields, each failing with :class:`InvalidArgument` naming its field."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from recserve.pipeline.errors import InvalidArgument

MAX_K = 500
DEFAULT_K = 20
MAX_ID_BYTES = 256  # UTF-8 bytes; the trainer refuses longer ids too (trainer/io.py)
MAX_PRICE = 1e12    # an item's price (UpdateItems), as the trainer's limit (trainer/io.py)
MAX_BATCH = 1000
MAX_LIST = 1000  # session items, exclude ids, categories
DEVICES = ("unspecified", "desktop", "mobile", "tablet", "tv")   # the proto's Device enum, by code
MAX_DEVICE = len(DEVICES) - 1
MAX_CONTEXT_EXTRA = 64  # entries of the context's free string map
MAX_EXPLAIN = 100  # items a Recommend with explain may ask for (pred_contrib: about 0.5 ms each)
EXPLAIN_CHUNK = 4  # items explained between two pauses of the compute slot
MAX_TS = 253402300799.0  # 9999-12-31T23:59:59Z: later "unix seconds" are milliseconds or garbage
MAX_EVENT_AHEAD = 86400.0  # an event's time may run ahead of the server's clock by a day (clock skew), no more


def check_count(n: int, limit: int, field_name: str, what: str) -> None:
    """A repeated field of more than ``limit`` entries (``what``: "ids", "entries", ...) is refused."""
    if n > limit:
        raise InvalidArgument(field_name, f"more than {limit} {what}")


def check_batch(n: int, field_name: str, what: str) -> None:
    """A write batch of more than ``MAX_BATCH`` entries (``what``: "events", "updates") is refused."""
    if n > MAX_BATCH:
        raise InvalidArgument(field_name, f"batch of {n} {what} exceeds {MAX_BATCH}")


def check_ts(ts: float, field_name: str) -> None:
    if not math.isfinite(ts) or ts < 0:
        raise InvalidArgument(field_name, "must be finite unix seconds >= 0")
    if ts > MAX_TS:
        shown = f"{ts:.0f}" if ts < 1e18 else f"{ts:.6g}"        # not a number of 300 digits
        raise InvalidArgument(field_name, f"{shown} is after the year 9999: unix seconds, not milliseconds")


@dataclass
class Filters:
    include_categories: list[str] = field(default_factory=list)
    exclude_categories: list[str] = field(default_factory=list)
    min_price: float | None = None
    max_price: float | None = None
    exclude_item_ids: list[str] = field(default_factory=list)
    in_stock_only: bool = True


@dataclass
class RecRequest:
    user_id: str = ""
    k: int = 0
    session_item_ids: list[str] = field(default_factory=list)
    timestamp: float = 0.0
    hour: int | None = None
    weekday: int | None = None
    device: int = 0
    country: str = ""
    extra: dict = field(default_factory=dict)
    filters: Filters = field(default_factory=Filters)
    exclude_consumed: bool = True
    mmr_lambda: float | None = None
    max_per_creator: int | None = None
    explain: bool = False
    deadline: float | None = None   # time.monotonic() after which the caller no longer waits


@dataclass
class Item:
    item_id: str
    score: float
    sources: list[str]
    contributions: list[tuple[str, float]] = field(default_factory=list)
    mmr_penalty: float = 0.0
    relevance: float = 0.0


@dataclass
class Result:
    items: list[Item]
    bundle_version: str
    timings: list[tuple[str, float]]
    cold_start: bool = False
    source_counts: dict = field(default_factory=dict)   # merged candidates found by each source
    # a cold answer's order: "country" (trending_country's list), "global" (the global list), "ranker"
    cold_list: str = ""
    trending_country: str = ""


def check_id(value: str, field_name: str, allow_empty: bool = False) -> None:
    if not value:
        if allow_empty:
            return
        raise InvalidArgument(field_name, "must not be empty")
    if len(value) > MAX_ID_BYTES or len(value.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise InvalidArgument(field_name, f"longer than {MAX_ID_BYTES} bytes (UTF-8)")
    if any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in value):
        raise InvalidArgument(field_name, f"malformed id {value[:40]!r} (control characters)")
    if value.isspace():
        raise InvalidArgument(field_name, "malformed id (only white space)")


def unknown_ids(field_name: str, ids: list[str], shown: int = 20) -> InvalidArgument:
    """The error naming the ids a batch refers to that the bundle does not know: the first ``shown`` of
    them in order, and how many more there are."""
    distinct = sorted(set(ids))
    more = f" and {len(distinct) - shown} more" if len(distinct) > shown else ""
    return InvalidArgument(field_name, f"{len(distinct)} unknown item id(s): {', '.join(distinct[:shown])}{more}")


def check_k(k: int, field_name: str = "k") -> int:
    if k == 0:
        return DEFAULT_K
    if not 1 <= k <= MAX_K:
        raise InvalidArgument(field_name, f"must be in 1..{MAX_K}, got {k}")
    return k
