"""MovieLens importers: ml-100k (u.data / u.item, latin-1) and ml-latest-small (ratings.csv / movies.csv).

A rating becomes a ``rating`` event with the stars as value; the first genre is the category, the
release year stands in for ``created_at``; there is no creator or price (price 0, creator unknown).
"""
from __future__ import annotations

import datetime as _dt
import functools
import mmap
import os
import re
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from recserve.pipeline.messages import MAX_EVENT_AHEAD
from trainer.csvread import read_csv
from trainer.io import MAX_TIMESTAMP, MIN_TIMESTAMP, Dataset, DataError, need_columns
from trainer.timestamps import epoch_seconds

ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
                 "Thriller", "War", "Western"]


def _finish(users, items, ts, stars, item_ids, category, created, ratings: Path, movies: Path, col: str,
            header: bool = True, delimiter: bytes = b",") -> Dataset:
    """The data set of the ratings (``users``, ``items``, ... read from ``ratings``, its movie ids in column
    ``col``) of the movies listed in ``movies`` (``item_ids``, ``category``, ``created``)."""
    if not len(ts):
        raise DataError("no ratings")
    user_ids, user_row = np.unique(users, return_inverse=True)
    item_index = {k: r for r, k in enumerate(item_ids)}
    rows = np.array([item_index.get(i, -1) for i in items], np.int64)
    if (rows < 0).any():
        _refuse(ratings, col, rows < 0, f"id(s) of movies missing from {movies.name}", header, items.tolist(),
                delimiter)
    order = np.lexsort((stars, rows, ts, user_row))
    n = len(item_ids)
    first_ts = np.full(len(user_ids), np.inf)
    np.minimum.at(first_ts, user_row, ts)
    return Dataset(user=user_row[order].astype(np.int32), item=rows[order].astype(np.int32),
                   ts=ts[order].astype(np.float64), event=np.full(len(ts), 4, np.int8),
                   value=stars[order].astype(np.float32), user_ids=user_ids.astype(object),
                   item_ids=np.asarray(item_ids, object), item_category=np.asarray(category, object),
                   item_creator=np.full(n, "", object), item_price=np.zeros(n),
                   item_created=np.asarray(created, np.float64), item_in_stock=np.ones(n, np.int8),
                   user_signup=first_ts, user_country=np.full(len(user_ids), "", object))


def _year_ts(year: int | None) -> float:
    if not year:
        return 0.0
    return _dt.datetime(int(year), 1, 1, tzinfo=_dt.timezone.utc).timestamp()


def _read_csv(path: Path, text: tuple[str, ...], header: bool = True, **options) -> pa.Table:
    """A CSV file as a table, the ``text`` columns as UTF-8 text (a cell that is not names its line), only
    empty cells null (``NA`` or ``nan`` are values, refused where a number is wanted); a file that does not
    parse is a DataError."""
    convert = pacsv.ConvertOptions(column_types={c: pa.binary() for c in text}, null_values=[""])
    try:
        t = read_csv(path, convert_options=convert, **options)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path.name}: cannot parse: {str(exc).splitlines()[0]}") from None
    twice = sorted(c for c in set(t.column_names) if t.column_names.count(c) > 1)
    if twice:
        raise DataError(f"{path.name}: duplicate column(s) {', '.join(map(repr, twice))}")
    for col in text:
        if col in t.column_names:
            t = t.set_column(t.column_names.index(col), col, _utf8(t.column(col), path, col, header))
    return t


def _utf8(c: pa.ChunkedArray, path: Path, col: str, header: bool) -> pa.ChunkedArray:
    try:
        return pc.cast(c, pa.string())
    except pa.ArrowInvalid:
        bad = np.zeros(len(c), bool)
        for row, v in enumerate(c.to_pylist()):
            try:
                v is None or v.decode("utf-8")
            except UnicodeDecodeError:
                bad[row] = True
        _refuse(path, col, bad, "value(s) that are not UTF-8 text", header)
        raise                           # not reached: _refuse raises


def _record_starts(delimiter: bytes) -> re.Pattern:
    """Tokens of a CSV file as pyarrow reads it: a quoted value (which may hold line breaks; a quote opens
    one only at the start of a value), or a line break (\\n, \\r\\n or \\r)."""
    d = re.escape(delimiter)
    return re.compile(rb'(?:(?<=' + d + rb')|(?<=[\r\n])|\A)"(?:[^"]|"")*(?:"|\Z)|\r\n|\r|\n')


_BREAK = re.compile(rb"\r\n|\r|\n")


def _line(path: Path, row: int, header: bool, delimiter: bytes = b",") -> int | None:
    """The line of the file on which data row ``row`` (from 0) starts, counting rows as pyarrow does: empty
    lines skipped, line breaks in quoted values kept in the value. None if the file has fewer rows."""
    k = row + int(header)
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return None
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            n, line, start = 1, 1, 0        # the physical line; the line and offset where this record began
            for t in _record_starts(delimiter).finditer(m):
                if t.group()[:1] == b'"':
                    n += len(_BREAK.findall(t.group()))
                    continue
                if t.start() > start:       # a record that is not an empty line ends here
                    if k == 0:
                        return line
                    k -= 1
                n += 1
                start, line = t.end(), n
            return line if k == 0 and len(m) > start else None


def _refuse(path: Path, col: str, bad: np.ndarray, what: str, header: bool, shown=None,
            delimiter: bytes = b",") -> None:
    """A DataError naming the file, the column and the line of the first ``bad`` row."""
    n, row = int(bad.sum()), int(np.flatnonzero(bad)[0])
    value = "" if shown is None else f" {shown[row]!r}"
    line = _line(path, row, header, delimiter)
    where = f"on line {line}" if line else f"in data row {row + 1}"
    raise DataError(f"{path.name}: column {col} has {n} {what}, the first{value} {where}")


# a MovieLens id: a non-negative decimal integer, digits only (no sign, point, exponent or white space)
_ID = r"^[0-9]+$"


def _ids(t: pa.Table, path: Path, col: str, header: bool = True, delimiter: bytes = b",") -> np.ndarray:
    """A column of ids (read as text): none may be empty, each a plain decimal integer (:data:`_ID`)."""
    c = t.column(col)
    refuse = functools.partial(_refuse, path, col, header=header, delimiter=delimiter)
    empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(c), ""), True).to_numpy(zero_copy_only=False)
    if empty.any():
        refuse(empty, "empty id(s)")
    bad = pc.invert(pc.match_substring_regex(c, _ID)).to_numpy(zero_copy_only=False)
    if bad.any():
        refuse(bad, "id(s) that are not plain decimal integers", shown=c.to_pylist())
    return c.to_numpy(zero_copy_only=False).astype(str)


# a decimal number as a person writes one: no "inf", "nan", "true", "1_0" or digits of other scripts
_NUMBER = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"


def _finite(t: pa.Table, path: Path, col: str, header: bool = True, times: bool = False, stars: bool = False,
            delimiter: bytes = b",") -> np.ndarray:
    """A column of numbers as float64: none empty, unparsable or infinite; ``times``: since 1970 in seconds
    (or milliseconds, microseconds, nanoseconds, as the build reads them), from the year 1 to 9999;
    ``stars``: MovieLens' ratings, 0.5 to 5."""
    c = t.column(col)
    refuse = functools.partial(_refuse, path, col, header=header, delimiter=delimiter)
    empty = pc.is_null(c).to_numpy(zero_copy_only=False)
    if pa.types.is_string(c.type):      # white space only
        empty |= pc.fill_null(pc.equal(pc.utf8_trim_whitespace(c), ""), True).to_numpy(zero_copy_only=False)
    if empty.any():
        refuse(empty, "empty value(s)")
    if pa.types.is_integer(c.type) or pa.types.is_floating(c.type):
        a = c.to_numpy(zero_copy_only=False).astype(np.float64)
    else:                               # text (some cell is not a number), true/false, dates
        try:
            s = pc.utf8_trim_whitespace(pc.cast(c, pa.string()))
            number = pc.if_else(pc.match_substring_regex(s, _NUMBER), s, pa.scalar(None, pa.string()))
            a = pc.cast(number, pa.float64()).to_numpy(zero_copy_only=False)        # not a number: NaN
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            a = np.full(len(c), np.nan)
    bad = ~np.isfinite(a)
    if bad.any():
        refuse(bad, "value(s) that are not finite numbers", shown=c.to_pylist())
    if times:
        a = epoch_seconds(a)
    bad = stars & ((a < 0.5) | (a > 5))
    if bad.any():
        refuse(bad, "rating(s) outside MovieLens' 0.5 to 5 stars", shown=c.to_pylist())
    bad = times & ((a < MIN_TIMESTAMP) | (a > MAX_TIMESTAMP))
    if bad.any():
        refuse(bad, "time(s) before the year 1 or after 9999", shown=c.to_pylist())
    bad = times & (a > time.time() + MAX_EVENT_AHEAD)            # as build refuses them
    if bad.any():
        refuse(bad, "time(s) more than a day after this machine's clock", shown=c.to_pylist())
    return a


def _unique(path: Path, col: str, ids: list[str]) -> None:
    _, first = np.unique(np.asarray(ids, str), return_index=True)
    if len(first) < len(ids):
        twice = np.ones(len(ids), bool)
        twice[first] = False
        _refuse(path, col, twice, "duplicate id(s)", True, ids)


def load_ml100k(path: Path) -> Dataset:
    data, item = path / "u.data", path / "u.item"
    for p in (data, item):
        if not p.is_file():
            raise DataError(f"{path}: not ml-100k (no {p.name})")
    names = ["user id", "item id", "rating", "timestamp"]        # u.data has no header
    t = _read_csv(data, tuple(names[:2]), False, read_options=pacsv.ReadOptions(column_names=names),
                  parse_options=pacsv.ParseOptions(delimiter="\t"))
    item_ids, cats, created, line_of = [], [], [], {}
    # lines end in \n or \r\n; latin-1 titles may hold bytes str.splitlines() would also break at (0x85)
    for n, line in enumerate(re.split(r"\r?\n", item.read_bytes().decode("latin-1")), 1):
        if not line.strip():
            continue
        f = line.split("|")
        if len(f) != 5 + len(ML100K_GENRES):
            raise DataError(f"{item.name}: line {n} has {len(f)} field(s), not 24 (id|title|release date|"
                            "video release date|IMDb URL|19 genre flags)")
        if not re.match(_ID, f[0]):
            raise DataError(f"{item.name}: movie id {f[0]!r} on line {n} is not a plain decimal integer")
        flags = [x.strip() for x in f[5:]]
        if any(x not in ("0", "1") for x in flags):
            raise DataError(f"{item.name}: line {n} has a genre flag that is not 0 or 1")
        if f[0] in line_of:
            raise DataError(f"{item.name}: movie id {f[0]!r} on line {n} is on line {line_of[f[0]]} already")
        line_of[f[0]] = n
        item_ids.append(f[0])
        g = [ML100K_GENRES[k] for k, v in enumerate(flags) if v == "1"]
        cats.append(g[0] if g else "unknown")
        m = re.search(r"(\d{4})$", f[2].strip())
        created.append(_year_ts(int(m.group(1)) if m else None))
    tab = {"header": False, "delimiter": b"\t"}
    return _finish(_ids(t, data, "user id", **tab), _ids(t, data, "item id", **tab),
                   _finite(t, data, "timestamp", times=True, **tab),
                   _finite(t, data, "rating", stars=True, **tab), item_ids, cats, created, data, item, "item id", **tab)


def load_ml_latest(path: Path) -> Dataset:
    ratings, movies = path / "ratings.csv", path / "movies.csv"
    for p in (ratings, movies):
        if not p.is_file():
            raise DataError(f"{path}: not ml-latest(-small) (no {p.name})")
    r = _read_csv(ratings, ("userId", "movieId"))
    need_columns(r, ratings, ["userId", "movieId", "rating", "timestamp"])
    m = _read_csv(movies, ("movieId", "title", "genres"))
    need_columns(m, movies, ["movieId", "title", "genres"])
    item_ids = _ids(m, movies, "movieId").tolist()
    _unique(movies, "movieId", item_ids)
    cats, created = [], []
    for title, genres in zip(m.column("title").to_pylist(), m.column("genres").to_pylist()):
        g = str(genres or "").split("|")[0]
        cats.append(g if g and g != "(no genres listed)" else "unknown")
        y = re.search(r"\((\d{4})\)\s*$", str(title or ""))
        created.append(_year_ts(int(y.group(1)) if y else None))
    return _finish(_ids(r, ratings, "userId"), _ids(r, ratings, "movieId"),
                   _finite(r, ratings, "timestamp", times=True),
                   _finite(r, ratings, "rating", stars=True), item_ids, cats, created, ratings, movies, "movieId")


def load_movielens(path: str) -> Dataset:
    p = Path(path)
    if not p.is_dir():
        raise DataError(f"{p}: not a directory")
    if (p / "u.data").is_file() and (p / "ratings.csv").is_file():
        raise DataError(f"{p}: holds both ml-100k (u.data) and ml-latest (ratings.csv): import one at a time, "
                        "each from a directory of its own")
    if (p / "u.data").is_file():
        return load_ml100k(p)
    if (p / "ratings.csv").is_file():
        return load_ml_latest(p)
    raise DataError(f"{p}: neither ml-100k (u.data) nor ml-latest (ratings.csv)")
