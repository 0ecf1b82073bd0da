"""MovieLens importers: ml-100k (u.data / u.item, latin-1) and ml-latest-small (ratings.csv / movies.csv).

A rating becomes a ``rating`` event with the stars as value; the first genre is the category, the
release year stands in for ``created_at``; there is no creator or price (price 0, creator unknown).
"""
from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from trainer.io import Dataset, DataError

ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
                 "Thriller", "War", "Western"]


def _finish(users, items, ts, stars, item_ids, category, created) -> Dataset:
    user_ids, user_row = np.unique(users, return_inverse=True)
    item_index = {k: r for r, k in enumerate(item_ids)}
    rows = np.array([item_index.get(i, -1) for i in items], np.int64)
    if (rows < 0).any():
        raise DataError(f"{int((rows < 0).sum())} rating(s) of movies missing from the movie list")
    order = np.lexsort((ts, user_row))
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


def load_ml100k(path: Path) -> Dataset:
    data, item = path / "u.data", path / "u.item"
    for p in (data, item):
        if not p.is_file():
            raise DataError(f"{path}: not ml-100k (no {p.name})")
    t = pacsv.read_csv(data, read_options=pacsv.ReadOptions(column_names=["u", "i", "r", "t"]),
                       parse_options=pacsv.ParseOptions(delimiter="\t"))
    item_ids, cats, created = [], [], []
    for line in item.read_bytes().decode("latin-1").splitlines():
        if not line.strip():
            continue
        f = line.split("|")
        item_ids.append(f[0])
        flags = [int(x) for x in f[5:5 + 19]]
        g = [ML100K_GENRES[k] for k, v in enumerate(flags) if v]
        cats.append(g[0] if g else "unknown")
        m = re.search(r"(\d{4})$", f[2].strip())
        created.append(_year_ts(int(m.group(1)) if m else None))
    return _finish(t.column("u").to_numpy().astype(str), t.column("i").to_numpy().astype(str),
                   t.column("t").to_numpy().astype(np.float64), t.column("r").to_numpy().astype(np.float64),
                   item_ids, cats, created)


def load_ml_latest(path: Path) -> Dataset:
    ratings, movies = path / "ratings.csv", path / "movies.csv"
    for p in (ratings, movies):
        if not p.is_file():
            raise DataError(f"{path}: not ml-latest(-small) (no {p.name})")
    r = pacsv.read_csv(ratings)
    m = pacsv.read_csv(movies, convert_options=pacsv.ConvertOptions(column_types={"movieId": pa.string()}))
    item_ids = m.column("movieId").to_pylist()
    cats, created = [], []
    for title, genres in zip(m.column("title").to_pylist(), m.column("genres").to_pylist()):
        g = (genres or "").split("|")[0]
        cats.append(g if g and g != "(no genres listed)" else "unknown")
        y = re.search(r"\((\d{4})\)\s*$", title or "")
        created.append(_year_ts(int(y.group(1)) if y else None))
    return _finish(r.column("userId").to_numpy().astype(str), r.column("movieId").to_numpy().astype(str),
                   r.column("timestamp").to_numpy().astype(np.float64),
                   r.column("rating").to_numpy().astype(np.float64), item_ids, cats, created)


def load_movielens(path: str) -> Dataset:
    p = Path(path)
    if not p.is_dir():
        raise DataError(f"{p}: not a directory")
    if (p / "u.data").is_file():
        return load_ml100k(p)
    if (p / "ratings.csv").is_file():
        return load_ml_latest(p)
    raise DataError(f"{p}: neither ml-100k (u.data) nor ml-latest (ratings.csv)")
