"""Writing a data set in the input format (``synth`` and ``import``): all or nothing, beside the output and
moved in with Ctrl-C held off."""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recserve.pipeline.messages import DEVICES
from trainer.io import EVENTS, TABLE_EXTENSIONS, DataError, Dataset
from trainer.writer import fsync_path, process_alive


def _iso(seconds: np.ndarray) -> pa.Array:
    arr = pa.array(np.asarray(seconds, np.int64), pa.int64()).cast(pa.timestamp("s"))
    return pc.strftime(arr, format="%Y-%m-%dT%H:%M:%S")


def write_dataset(ds: Dataset, out_dir: str | os.PathLike, fmt: str = "csv") -> dict:
    """Write ``ds`` in the input format to ``out_dir``, all or nothing: the files are written and fsynced in a
    temporary directory beside it, then moved in with Ctrl-C held off, replacing the data set there (in either
    format; other files are left alone). Returns {file name: rows}."""
    if not np.isfinite(ds.ts).all():        # as int64 they would be -2**63, a date in 1677
        raise DataError(f"{int((~np.isfinite(ds.ts)).sum())} interaction(s) without a time (NaN or infinite)")
    out = Path(out_dir)
    value = pa.array(ds.value.astype(np.float64), mask=np.isnan(ds.value))
    tables = {
        "interactions": pa.table({
            "user_id": pa.array(ds.user_ids[ds.user].astype(str)),
            "item_id": pa.array(ds.item_ids[ds.item].astype(str)),
            # whole seconds as integers; a fractional time kept as it is (not cut to its second)
            "timestamp": pa.array(ds.ts.astype(np.int64) if (ds.ts == np.floor(ds.ts)).all() else ds.ts),
            "event": pa.array(np.array(EVENTS, dtype=object)[ds.event].astype(str)),
            "value": value,
            **({"device": pa.array(np.array(DEVICES, dtype=object)[ds.device].astype(str))} if ds.device.any()
               else {}),
        }),
        "items": pa.table({
            "item_id": pa.array(ds.item_ids.astype(str)), "category": pa.array(ds.item_category.astype(str)),
            "creator": pa.array(ds.item_creator.astype(str)), "price": pa.array(ds.item_price),
            "created_at": _iso(ds.item_created), "in_stock": pa.array(ds.item_in_stock.astype(np.int64)),
            **{k: pa.array(v, mask=np.isnan(v)) for k, v in ds.item_extra.items()},
        }),
        "users": pa.table({
            "user_id": pa.array(ds.user_ids.astype(str)),
            "signup_date": _iso(np.nan_to_num(ds.user_signup, nan=0.0)),
            "country": pa.array(ds.user_country.astype(str)),
            **{k: pa.array(v, mask=np.isnan(v)) for k, v in ds.user_extra.items()},
        }),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{glob.escape(out.name)}.tmp-*"):    # left by a writer that was killed
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        written = {}
        for stem, t in tables.items():
            if fmt == "parquet":
                p = tmp / f"{stem}.parquet"
                pq.write_table(t, p)
            else:
                p = tmp / f"{stem}.csv"
                pacsv.write_csv(t, p, pacsv.WriteOptions(quoting_style="needed"))
            fsync_path(p)
            written[p.name] = t.num_rows
        with _signals_held():
            _move_in(tmp, out, list(written))
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_in(tmp: Path, out: Path, names: list[str]) -> None:
    """``tmp``'s files into ``out``: a rename of the directory when ``out`` does not exist; otherwise file by
    file, after removing the other forms of the same tables (a CSV and a Parquet file of one table would make
    ``out`` unreadable)."""
    if not out.exists():
        os.rename(tmp, out)
        fsync_path(out.parent)
        return
    for name in names:
        stem = name.split(".")[0]
        for ext in TABLE_EXTENSIONS:
            if stem + ext != name:
                (out / (stem + ext)).unlink(missing_ok=True)
        os.replace(tmp / name, out / name)
    fsync_path(out)


@contextlib.contextmanager
def _signals_held():
    """Ctrl-C, SIGTERM and SIGHUP wait until the block is done, then act as usual (main thread only:
    elsewhere Python cannot set handlers). Handlers, not a signal mask: a blocked signal still reaches Python
    through any other thread, such as a BLAS pool's."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    held = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    old = {s: signal.getsignal(s) for s in held}
    old = {s: h for s, h in old.items() if h is not None}           # None: set outside Python; left alone
    for s in old:
        signal.signal(s, lambda n, _frame: got.append(n))
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for n in dict.fromkeys(got):
            signal.raise_signal(n)
