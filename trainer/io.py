"""Input data: reading CSV / Parquet (by extension), fast validation with one-line reasons (writing:
``trainer.datawrite``).

Input format (a directory):

- ``interactions.(csv|parquet)``: ``user_id, item_id, timestamp, event[, value][, device]``; event in
  view/click/cart/purchase/rating; timestamp as unix seconds (or ms) or ISO-8601; device: trainer.devices.
- ``items.(csv|parquet)``: ``item_id, category, creator, price, created_at, in_stock``.
- ``users.(csv|parquet)`` (optional): ``user_id, signup_date, country``.
"""
from __future__ import annotations

import hashlib
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

# the server's bounds: 9999-12-31, and a day ahead of the clock for an event
from recserve.pipeline.messages import MAX_EVENT_AHEAD, MAX_TS as MAX_TIMESTAMP
from trainer.csvread import lines_joined, read_csv
from trainer.devices import device_codes
from trainer.timestamps import PER_SECOND, epoch_seconds, text_timestamps

MIN_TIMESTAMP = -62135596800.0      # 0001-01-01T00:00:00Z: ages in days stay finite in float32
F32_MAX = float(np.finfo(np.float32).max)

EVENTS = ["view", "click", "cart", "purchase", "rating"]
EVENT_CODE = {e: k for k, e in enumerate(EVENTS)}
# columns holding identifiers or category codes: always text, never numbers ("007" stays "007")
ID_COLUMNS = ("user_id", "item_id", "category", "creator", "country")


class DataError(ValueError):
    """Bad input data; the message is one line naming the file and the problem."""


@dataclass
class Dataset:
    user: np.ndarray            # int32 row into user_ids, per interaction
    item: np.ndarray            # int32 row into item_ids
    ts: np.ndarray              # float64 unix seconds
    event: np.ndarray           # int8 code (EVENTS)
    value: np.ndarray           # float32, NaN when absent
    user_ids: np.ndarray        # object (str)
    item_ids: np.ndarray
    item_category: np.ndarray   # object (str)
    item_creator: np.ndarray    # object (str), "" unknown
    item_price: np.ndarray      # float64
    item_created: np.ndarray    # float64 unix seconds
    item_in_stock: np.ndarray   # int8
    user_signup: np.ndarray     # float64 unix seconds (NaN unknown)
    user_country: np.ndarray    # object
    device: np.ndarray | None = None    # int8 device code per interaction (DEVICES); None: all unspecified
    # extra numeric columns of the item / user tables (name -> float64 per row, NaN missing): ranker features
    item_extra: dict = field(default_factory=dict)
    user_extra: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)   # input file name -> {size, sha256}

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def __post_init__(self):
        if self.device is None:
            self.device = np.zeros(len(self.user), np.int8)

    def __len__(self) -> int:
        return len(self.user)

    def subset(self, mask: np.ndarray) -> "Dataset":
        """The same catalogue and users with only the interactions where ``mask`` holds."""
        d = Dataset(**{k: getattr(self, k) for k in self.__dataclass_fields__})
        for k in ("user", "item", "ts", "event", "value", "device"):
            setattr(d, k, getattr(self, k)[mask])
        return d


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


TABLE_EXTENSIONS = (".parquet", ".pq", ".csv", ".csv.gz")     # the forms a table's file may take


def find_table(data_dir: Path, stem: str, required: bool = True) -> Path | None:
    """The file of table ``stem`` in ``data_dir``; a directory or a broken link under a table's name is an
    error, not an absent table (an optional table would be skipped without a word)."""
    for p in (data_dir / f"{stem}{ext}" for ext in TABLE_EXTENSIONS):
        if os.path.lexists(p) and not p.is_file():
            what = ("a directory" if p.is_dir() else "a symbolic link to nothing" if not p.exists()
                    else "not a regular file")
            raise DataError(f"{data_dir}: {p.name} is {what}, not a data file")
    found = [p for p in (data_dir / f"{stem}{ext}" for ext in TABLE_EXTENSIONS) if p.is_file()]
    if len(found) > 1:
        raise DataError(f"{data_dir}: both {' and '.join(p.name for p in found)}: keep one")
    if found:
        return found[0]
    if required:
        raise DataError(f"{data_dir}: no {stem}.csv, {stem}.csv.gz, {stem}.parquet or {stem}.pq")
    return None


def read_table(path: Path, text: tuple = (), report: dict | None = None) -> pa.Table:
    """A CSV or Parquet file as an Arrow table; CSV id columns (:data:`ID_COLUMNS`) are read as bytes, so that
    text that is not UTF-8 is refused naming its column and row (:func:`_as_text`), never parsed as numbers;
    so are the CSV columns ``text`` names (no "NA" read as a null). Quoted CSV values that span lines are
    read as one value each (RFC 4180), and counted in ``report["csv_lines_joined"]``: a stray quote reads
    the same, joining rows."""
    try:
        if path.suffix in (".parquet", ".pq"):
            _no_duplicate_columns(path, _names(pq.read_schema(path), path))     # pyarrow's read fails on them
            t = pq.read_table(path)
        else:
            if path.stat().st_size == 0:
                raise DataError(f"{path.name}: empty file")
            # pyarrow ignores column_types entries for columns the file does not have
            opts = pacsv.ConvertOptions(strings_can_be_null=False,
                                        column_types={c: pa.binary() for c in ID_COLUMNS + tuple(text)})
            t = read_csv(path, convert_options=opts)
            if report is not None and (joined := lines_joined(path, t.num_rows)) is not None:
                report.setdefault("csv_lines_joined", {})[path.name] = {"lines": joined[0], "first": joined[1]}
    except DataError:
        raise
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path.name}: cannot parse: {_readable(str(exc).splitlines()[0])}") from None
    except (EOFError, zlib.error) as exc:   # gzip's own read of a file cut short or damaged (csvread's scans)
        raise DataError(f"{path.name}: cannot read: the compressed file is cut short or damaged ({exc})") from None
    if t.num_rows == 0:
        raise DataError(f"{path.name}: empty file (no rows)")
    _no_duplicate_columns(path, _names(t.schema, path))
    return t


def _names(schema: pa.Schema, path: Path) -> list[str]:
    """The column names; one that is not UTF-8 is refused with its place in the header."""
    names = []
    for i in range(len(schema)):
        try:
            names.append(schema.field(i).name)
        except UnicodeDecodeError as exc:
            raise DataError(f"{path.name}: the name of column {i + 1} is not UTF-8 text: {exc.object[:60]!r}") \
                from None
    return names


def _no_duplicate_columns(path: Path, names: list[str]) -> None:
    twice = sorted(c for c in set(names) if names.count(c) > 1)
    if twice:
        raise DataError(f"{path.name}: duplicate column(s) {_quoted(twice)}")


def need_columns(t: pa.Table, path: Path, cols: list[str]) -> None:
    missing = [c for c in cols if c not in t.column_names]
    if missing:
        raise DataError(f"{path.name}: missing column(s) {_quoted(missing)} (has {_quoted(t.column_names)})")


def _readable(text: str, limit: int = 200) -> str:
    """``text`` with its control characters escaped, cut to ``limit`` characters: a parser's message may quote
    a line of a binary file, whose bytes do not belong on a terminal."""
    parts, n = [], 0
    for c in text:
        e = c if c.isprintable() else repr(c)[1:-1]
        if n + len(e) > limit:
            return "".join(parts) + "..."
        parts.append(e)
        n += len(e)
    return "".join(parts)


def _no_duplicates(ids: np.ndarray, path: Path, col: str) -> None:
    uniq, counts = np.unique(ids, return_counts=True)
    if len(uniq) != len(ids):
        raise DataError(f"{path.name}: {int((counts > 1).sum())} duplicate {col}(s), e.g. {uniq[counts > 1][0]!r}")


def _quoted(names) -> str:
    """Names as a message lists them, each quoted: 'view ', '' and 'a, b' are told apart."""
    return ", ".join(repr(str(n)) for n in names)


def _as_text(c: pa.ChunkedArray, path: Path, col: str) -> pa.ChunkedArray:
    """A column as strings; integers (Parquet ids) in decimal form, so 7, 7.0, decimal 7.0 and "7" are one id."""
    if pa.types.is_decimal(c.type):
        try:
            c = pc.cast(c, pa.int64())      # refuses a fraction or a value beyond int64
        except pa.ArrowInvalid:
            raise DataError(f"{path.name}: column {col} has non-integer numbers (ids must be text or integers)") \
                from None
    elif pa.types.is_floating(c.type):
        if c.type == pa.float16():          # pc.floor has no half-float kernel
            c = pc.cast(c, pa.float32())
        valid = pc.drop_null(c)
        try:
            whole = not len(valid) or pc.all(pc.equal(pc.floor(valid), valid)).as_py()
            c = pc.cast(c, pa.int64()) if whole else None
        except pa.ArrowInvalid:              # inf, or beyond int64
            c = None
        if c is None:
            raise DataError(f"{path.name}: column {col} has non-integer numbers (ids must be text or integers)")
    value = c.type.value_type if pa.types.is_dictionary(c.type) else c.type
    if pa.types.is_temporal(value) or pa.types.is_boolean(value):
        # a time, date, duration or boolean would become text such as '1970-01-01 00:00:01.000' or 'true'
        raise DataError(f"{path.name}: column {col} is not text (type {c.type}; ids and names are text or "
                        "integers)")
    try:
        return pc.cast(c, pa.string())
    except pa.ArrowNotImplementedError:     # a list, struct, map, ... (Parquet): no text form
        raise DataError(f"{path.name}: column {col} is not text (type {c.type}; ids and names are text or "
                        "integers)") from None
    except pa.ArrowInvalid as exc:          # binary values that are not UTF-8
        why = _not_utf8(c) if pa.types.is_binary(c.type) or pa.types.is_large_binary(c.type) else None
        raise DataError(f"{path.name}: column {col} {why or f'is not text: {_reason(exc)}'}") from None


def _not_utf8(c: pa.ChunkedArray) -> str | None:
    """Where a binary column first holds bytes that are not UTF-8 (rows counted from 1)."""
    for row, v in enumerate(c.to_pylist(), 1):
        try:
            if v is not None:
                v.decode("utf-8")
        except UnicodeDecodeError:
            return f"is not UTF-8 text: row {row} holds {v[:60]!r}"
    return None


def _reason(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


MAX_ID_BYTES = 256     # the server's limit on a user or item id (recserve/pipeline/messages.py)
MAX_PRICE = 1e12       # and on a price: features are float32, and sums of prices must stay finite


def _strings(t: pa.Table, path: Path, col: str, allow_empty: bool = True, is_id: bool = False,
             names: bool = False) -> np.ndarray:
    """A text column; ``is_id``: ids as the server accepts them (at most MAX_ID_BYTES bytes of UTF-8, no
    control characters, not only white space), so that every id in a bundle can be asked for; ``names``:
    the same checks for names (categories)."""
    c = t.column(col)
    if c.null_count:
        raise DataError(f"{path.name}: column {col} has {c.null_count} empty value(s)")
    s = _as_text(c, path, col)
    if not allow_empty:
        n = int(pc.sum(pc.equal(s, "")).as_py() or 0)
        if n:
            raise DataError(f"{path.name}: column {col} has {n} empty value(s)")
    if is_id or names:
        _check_names(s, path, col, "id(s)" if is_id else "name(s)")
    return np.asarray(s.to_numpy(zero_copy_only=False), dtype=object)


def _check_names(s: pa.ChunkedArray, path: Path, col: str, what: str) -> None:
    """Ids, category and creator names as the server takes them: at most MAX_ID_BYTES bytes of UTF-8 (they
    are LMDB keys, and a request names them), no control characters, not only white space."""
    for bad, why in ((pc.greater(pc.binary_length(s), MAX_ID_BYTES), f"longer than {MAX_ID_BYTES} bytes"),
                     (pc.match_substring_regex(s, "[\\x00-\\x1f\\x7f-\\x9f]"), "with control characters"),
                     (pc.utf8_is_space(s), "of white space only")):
        n = int(pc.sum(bad).as_py() or 0)
        if n:
            e_g = pc.filter(s, bad)[0].as_py()
            raise DataError(f"{path.name}: column {col} has {n} {what} {why}, e.g. {e_g[:60]!r}")


def _optional_strings(t: pa.Table, path: Path, col: str, names: bool = False) -> np.ndarray:
    """An optional text column, empty (null) values as ""; ``names``: checked as :func:`_check_names`."""
    s = pc.fill_null(_as_text(t.column(col), path, col), "")
    if names:
        _check_names(s, path, col, "name(s)")
    return np.asarray(s.to_numpy(zero_copy_only=False), object)


def _numbers(t: pa.Table, path: Path, col: str, allow_nan=False) -> np.ndarray:
    c = t.column(col)
    if not (pa.types.is_integer(c.type) or pa.types.is_floating(c.type) or pa.types.is_boolean(c.type)):
        try:
            c = _floats(c)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DataError(f"{path.name}: column {col} is not numeric (type {t.column(col).type})") from None
    a = c.to_numpy(zero_copy_only=False).astype(np.float64)
    if not allow_nan and not np.isfinite(a).all():
        raise DataError(f"{path.name}: column {col} has {int((~np.isfinite(a)).sum())} NaN/empty/inf value(s)")
    return a


def _floats(c):
    """An Arrow column as float64 by Arrow's cast; a decimal one through its text, which parses to the
    nearest float64 (Arrow's decimal cast is not correctly rounded: decimal 7.89 gave 7.890000000000001, one
    above the 7.89 a CSV file gives, and a price filter at 7.89 left the item out)."""
    if pa.types.is_decimal(c.type):
        c = pc.cast(c, pa.string())
    return pc.cast(c, pa.float64())


EXTRA_MAX = 32     # extra numeric columns per table that become ranker features
ITEM_KNOWN = ("item_id", "category", "creator", "price", "created_at", "in_stock")
USER_KNOWN = ("user_id", "signup_date", "country")
INTERACTION_KNOWN = ("user_id", "item_id", "timestamp", "event", "value", "device")     # any other column is not used


def _extra_columns(t: pa.Table, path: Path, known, report: dict, what: str) -> dict[str, np.ndarray]:
    """The table's other numeric (integer, float, decimal or boolean) columns, in file order, as float64
    (integers beyond 2^53 rounded to the nearest float64; empty, infinite or beyond float32 -> NaN: missing);
    the first :data:`EXTRA_MAX`. Text columns and any beyond are listed in ``report`` as not used."""
    out: dict[str, np.ndarray] = {}
    unused = []
    index = _pandas_index(t)
    for name in t.column_names:
        if name in known:
            continue
        c = t.column(name)
        numeric = (pa.types.is_integer(c.type) or pa.types.is_floating(c.type) or pa.types.is_boolean(c.type)
                   or pa.types.is_decimal(c.type))
        if not numeric or len(out) >= EXTRA_MAX or name in index:
            unused.append(name)
            continue
        try:
            # integers through numpy: Arrow's cast refuses those beyond 2^53 (hashes, snowflake ids, ns times)
            a = (c.to_numpy(zero_copy_only=False) if pa.types.is_integer(c.type)
                 else _floats(c).to_numpy(zero_copy_only=False)).astype(np.float64)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, TypeError) as exc:
            raise DataError(f"{path.name}: column {name!r} cannot be read as numbers: {_reason(exc)}") from None
        a[~(np.abs(a) <= F32_MAX)] = np.nan     # beyond float32 (the ranker's type) is missing too, not inf
        out[name] = a
    report[f"{what}_feature_columns"] = list(out)
    if unused:
        report[f"{what}_columns_not_used"] = unused
    return out


def _pandas_index(t: pa.Table) -> set[str]:
    """The columns that hold a pandas index, not data: those a Parquet file's pandas metadata names
    (``__index_level_0__``, written by ``df.to_parquet()`` for an index that is not 0..n-1), and a column
    without a name (``df.to_csv()`` writes its index so)."""
    try:
        named = {c for c in (t.schema.pandas_metadata or {}).get("index_columns") or [] if isinstance(c, str)}
    except (ValueError, TypeError, AttributeError):     # metadata that is not pandas': no index named
        named = set()
    return named | {""}


NULL_TEXT = pacsv.ConvertOptions().null_values     # what pyarrow reads as null in a CSV's numeric column


def _timestamps(t: pa.Table, path: Path, col: str, empty: float | None = None) -> np.ndarray:
    """A column of times as unix seconds: numbers (seconds, ms, µs or ns), Arrow timestamps or dates of any
    unit and zone, or text holding ISO 8601 (with or without a zone or fractions of a second) or numbers,
    mixed freely. Empty cells are an error, or ``empty`` where given."""
    c = t.column(col)
    c = c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c
    if pa.types.is_integer(c.type) or pa.types.is_floating(c.type):
        out = epoch_seconds(c.to_numpy(zero_copy_only=False).astype(np.float64))
    elif pa.types.is_timestamp(c.type):
        ticks = pc.fill_null(pc.cast(c, pa.int64()), 0).to_numpy(zero_copy_only=False)
        per = int(PER_SECOND[c.type.unit])
        out = (ticks // per).astype(np.float64) + (ticks % per) / per       # whole seconds stay exact
    elif pa.types.is_date(c.type):
        out = pc.cast(pc.cast(c, pa.timestamp("s")), pa.int64()).to_numpy(zero_copy_only=False).astype(np.float64)
    else:
        try:
            c = pc.utf8_trim_whitespace(pc.cast(c, pa.string()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            why = _not_utf8(c) if pa.types.is_binary(c.type) else None
            raise DataError(f"{path.name}: column {col} {why or 'has unparsable timestamps'}") from None
        # an empty CSV cell, or a null (NA, NaN, null...) that pyarrow's reader keeps as text in a text column
        c = pc.if_else(pc.is_in(c, value_set=pa.array(NULL_TEXT)), pa.scalar(None, pa.string()), c)
        out = text_timestamps(c)
    nulls = pc.is_null(c).to_numpy(zero_copy_only=False)
    if nulls.any() and empty is None:
        raise DataError(f"{path.name}: column {col} has {int(nulls.sum())} missing timestamp(s) (empty, or a null "
                        f"such as NA, NaN or null), first in row {int(np.argmax(nulls)) + 1}")
    for bad, what in ((~np.isfinite(out) & ~nulls, "unparsable timestamp(s)"),
                      (out > MAX_TIMESTAMP, "timestamp(s) after the year 9999"),
                      (out < MIN_TIMESTAMP, "timestamp(s) before the year 1")):
        if bad.any():
            raise DataError(f"{path.name}: column {col} has {int(bad.sum())} {what}, e.g. "
                            f"{_cell(c, int(np.argmax(bad)))!r}")
    if nulls.any():
        out[nulls] = empty
    return out


def _not_ahead(t: pa.Table, path: Path, ts: np.ndarray) -> None:
    """Refuses interactions more than a day after this machine's clock, as the server's RecordEvents does: one
    digit too many would put the bundle's "now" centuries ahead and every trending score at 0."""
    ahead = ts > time.time() + MAX_EVENT_AHEAD
    if ahead.any():
        row = int(np.argmax(ahead))
        raise DataError(f"{path.name}: column timestamp has {int(ahead.sum())} time(s) more than a day after this "
                        f"machine's clock, first in row {row + 1}: {_cell(t.column('timestamp'), row)!r}, read as "
                        f"{np.datetime64(int(ts[row]), 's')} UTC")


def _cell(c, row: int):
    """A cell as a message shows it; times as text (``as_py`` refuses nanoseconds without pandas)."""
    cell = c.take(pa.array([row]))
    return pc.cast(cell, pa.string())[0].as_py() if pa.types.is_temporal(cell.type) else cell[0].as_py()


def _codes(values: np.ndarray, vocab: np.ndarray) -> np.ndarray:
    """Row of each value in ``vocab`` (sorted lookup), -1 when absent."""
    order = np.argsort(vocab)
    sv = vocab[order]
    pos = np.searchsorted(sv, values)
    pos = np.minimum(pos, len(sv) - 1)
    hit = sv[pos] == values
    return np.where(hit, order[pos], -1).astype(np.int64)


def joined_text(report: dict) -> str:
    """The data report's ``csv_lines_joined`` as text."""
    return "; ".join(f"{name}: {j['lines']} line(s) read into the row above by quoted values spanning lines"
                     + (f" (the first opens on line {j['first']})" if j["first"] else "")
                     for name, j in report.get("csv_lines_joined", {}).items())


def load_dataset(data_dir: str | os.PathLike, drop_unknown: bool = False) -> Dataset:
    """Read and validate a data directory. Raises :class:`DataError` with a one-line reason; that of an
    unknown item id names the CSV lines read into the row above by quoted values spanning lines, if any (a
    stray quote that joined two rows is a likely cause of it then)."""
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"{d}: " + ("not a directory" if d.exists() else "does not exist"))
    report: dict = {}
    files: dict = {}

    ip = find_table(d, "items")
    it = read_table(ip, report=report)
    need_columns(it, ip, ["item_id", "category", "price"])
    item_ids = _strings(it, ip, "item_id", allow_empty=False, is_id=True)
    _no_duplicates(item_ids, ip, "item_id")
    category = _optional_strings(it, ip, "category", names=True)     # null as "", as a CSV empty cell
    price = _numbers(it, ip, "price", allow_nan=True)
    if np.isnan(price).any():
        raise DataError(f"{ip.name}: column price has {int(np.isnan(price).sum())} NaN/empty value(s)")
    if (price < 0).any():
        raise DataError(f"{ip.name}: column price has negative values")
    too_high = ~(price <= MAX_PRICE)
    if too_high.any():
        raise DataError(f"{ip.name}: column price has {int(too_high.sum())} value(s) above {MAX_PRICE:g} or "
                        f"infinite, e.g. {price[too_high][0]:g}")
    creator = np.full(len(item_ids), "", object)
    if "creator" in it.column_names:     # optional per item: empty = unknown creator
        creator = _optional_strings(it, ip, "creator", names=True)
    # optional per item: empty or absent = unknown, read as old (never "new")
    created = _timestamps(it, ip, "created_at", empty=0.0) if "created_at" in it.column_names \
        else np.zeros(len(item_ids))
    in_stock = (_numbers(it, ip, "in_stock") != 0).astype(np.int8) if "in_stock" in it.column_names \
        else np.ones(len(item_ids), np.int8)
    item_extra = _extra_columns(it, ip, ITEM_KNOWN, report, "extra_item")
    files[ip.name] = {"size": ip.stat().st_size, "sha256": sha256_file(ip)}
    # item rows in id order, whatever the file's (as users are): the same items build the same bundle
    by_id = np.argsort(item_ids, kind="stable")
    item_ids, category, price, creator, created, in_stock = (
        a[by_id] for a in (item_ids, category, price, creator, created, in_stock))
    item_extra = {name: a[by_id] for name, a in item_extra.items()}

    xp = find_table(d, "interactions")
    xt = read_table(xp, text=("device",), report=report)
    need_columns(xt, xp, ["user_id", "item_id", "timestamp", "event"])
    others = [c for c in xt.column_names if c not in INTERACTION_KNOWN]
    if others:          # kept in the report as the item and user tables' unused columns are
        report["extra_interaction_columns_not_used"] = others
    x_user = _strings(xt, xp, "user_id", allow_empty=False, is_id=True)
    x_item = _strings(xt, xp, "item_id", allow_empty=False)
    ts = _timestamps(xt, xp, "timestamp")
    _not_ahead(xt, xp, ts)
    ev_str = _strings(xt, xp, "event")
    ev_vocab = np.array(EVENTS, dtype=object)
    ev = _codes(ev_str, ev_vocab)
    if (ev < 0).any():
        bad = np.unique(ev_str[ev < 0])
        raise DataError(f"{xp.name}: unknown event(s) {_quoted(bad[:5])} (expected {'/'.join(EVENTS)})")
    value = _numbers(xt, xp, "value", allow_nan=True).astype(np.float32) if "value" in xt.column_names \
        else np.full(len(ts), np.nan, np.float32)
    device, why = device_codes(xt)
    if why:
        raise DataError(f"{xp.name}: column device {why}")
    item_row = _codes(x_item, item_ids)
    unknown = item_row < 0
    if unknown.any():
        n = int(unknown.sum())
        if not drop_unknown:
            joined = f"; note: {joined_text(report)}" if report.get("csv_lines_joined") else ""
            raise DataError(f"{xp.name}: {n} interaction(s) with unknown item_id, e.g. {x_item[unknown][0]!r} "
                            f"(use --drop-unknown to drop them){joined}")
        report["dropped_unknown_items"] = n
        keep = ~unknown
        x_user, item_row, ts, ev, value, device = (x_user[keep], item_row[keep], ts[keep], ev[keep], value[keep],
                                                   device[keep])
        if len(ts) == 0:
            raise DataError(f"{xp.name}: no interaction left after dropping unknown items")
    else:
        report["dropped_unknown_items"] = 0
    files[xp.name] = {"size": xp.stat().st_size, "sha256": sha256_file(xp)}

    user_ids = np.unique(x_user)
    signup = np.full(len(user_ids), np.nan)
    country = np.full(len(user_ids), "", object)
    user_extra: dict[str, np.ndarray] = {}
    up = find_table(d, "users", required=False)
    if up is not None:
        ut = read_table(up, report=report)
        need_columns(ut, up, ["user_id"])
        u_ids = _strings(ut, up, "user_id", allow_empty=False, is_id=True)
        _no_duplicates(u_ids, up, "user_id")
        # users known from users.csv but without interactions are kept (cold users)
        user_ids = np.unique(np.concatenate([user_ids, u_ids]))
        signup = np.full(len(user_ids), np.nan)
        country = np.full(len(user_ids), "", object)
        r = _codes(u_ids, user_ids)
        if "signup_date" in ut.column_names:
            signup[r] = _timestamps(ut, up, "signup_date", empty=np.nan)     # empty: unknown
        if "country" in ut.column_names:
            country[r] = _optional_strings(ut, up, "country", names=True)    # a request names them
        for name, a in _extra_columns(ut, up, USER_KNOWN, report, "extra_user").items():
            user_extra[name] = np.full(len(user_ids), np.nan)
            user_extra[name][r] = a
        files[up.name] = {"size": up.stat().st_size, "sha256": sha256_file(up)}
    read = {p.name for p in (ip, xp, up) if p is not None}
    try:
        unread = sorted(p.name for p in d.iterdir() if p.name not in read and not p.name.startswith("."))
    except OSError:     # a directory that may be entered but not listed: its tables were found by name
        unread = []
    if unread:          # a misspelt optional table (users.CSV, user.csv) would otherwise go without a word
        report["files_not_read"] = unread
    user_row = _codes(x_user, user_ids)
    order = np.lexsort((device, value, item_row, ev, ts, user_row))     # ties by item, value, device: not file order
    # interactions that repeat another in every column are counted, not dropped: with times of a day
    # (dates without hours) a second view of an item that day is one, and a log appended twice makes them all
    user_row, item_row, ev, ts, value, device = (a[order] for a in (user_row, item_row, ev, ts, value, device))
    same = np.ones(max(len(order) - 1, 0), bool)
    for a in (user_row, item_row, ev, ts, value, device):
        same &= (a[1:] == a[:-1]) | ((a[1:] != a[1:]) & (a[:-1] != a[:-1]))      # NaN values alike
    report["repeated_interactions"] = int(same.sum())
    report.update(interactions=int(len(ts)), users=int(len(user_ids)), items=int(len(item_ids)))
    return Dataset(user=user_row.astype(np.int32), item=item_row.astype(np.int32),
                   ts=ts, event=ev.astype(np.int8), value=value, device=device,
                   user_ids=user_ids, item_ids=item_ids, item_category=category, item_creator=creator,
                   item_price=price, item_created=created, item_in_stock=in_stock, user_signup=signup,
                   user_country=country, item_extra=item_extra, user_extra=user_extra, report=report, files=files)
