"""A trained bundle on disk: resolution (root with CURRENT -> version dir), verification, loading.

``verify`` checks checksums, format version and schema consistency before hnswlib or LightGBM read a
byte, and raises :class:`BundleError` naming the first problem (one line).
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

FORMAT_VERSION = 1
REQUIRED_FILES = ("tables.lmdb", "index.hnsw", "ranker.txt")
REQUIRED_KEYS = ("format_version", "version", "created_at", "counts", "dim", "feature_schema", "index",
                 "params", "training", "files")
# the manifest carries its own digest (MANIFEST_DIGEST); the report files written after the build
# (evaluation) are not checksummed
UNCHECKED = {"manifest.json", "report.json", "report.html"}
MANIFEST_DIGEST = "manifest_sha256"


# hnswlib's (0.8) saveIndex header: offsetLevel0, max_elements, cur_element_count, size_data_per_element,
# label_offset, offsetData (size_t), maxlevel (int), enterpoint_node (uint32), maxM, maxM0, M (size_t),
# mult (double), ef_construction (size_t); then cur_element_count level-0 records and one link-list
# length (uint32) per element
_HNSW_HEADER = struct.Struct("<6QiI3QdQ")
_HNSW_LABEL = 8          # sizeof(labeltype)


class BundleError(ValueError):
    """A bundle is missing, incomplete, tampered with or inconsistent."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_digest(m: dict) -> str:
    """sha256 of the manifest's content, every key but the digest itself, in one canonical JSON form (sorted
    keys, no spaces): a changed value changes it, a change of layout does not."""
    body = {k: v for k, v in m.items() if k != MANIFEST_DIGEST}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def manifest_intact(m: dict) -> bool:
    """Whether the manifest's content is what its digest says (a manifest written before digests has none)."""
    return MANIFEST_DIGEST not in m or m[MANIFEST_DIGEST] == manifest_digest(m)


def seal_manifest(m: dict) -> dict:
    """``m`` with its digest set (the trainer's writes of a manifest)."""
    return {**{k: v for k, v in m.items() if k != MANIFEST_DIGEST}, MANIFEST_DIGEST: manifest_digest(m)}


def version_dir(root: str | os.PathLike, name: str) -> Path:
    """The directory of version ``name`` (what CURRENT holds) under ``root``: a plain directory name,
    never a path that leads elsewhere."""
    if not name:
        raise BundleError(f"{Path(root) / 'CURRENT'} is empty")
    if "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        raise BundleError(f"{Path(root) / 'CURRENT'}: invalid version name {name!r} (a directory name in {root})")
    return Path(root) / name


def read_current(root: str | os.PathLike) -> str | None:
    """The version name ``root/CURRENT`` holds ("" when it is empty), None when there is no CURRENT;
    ``BundleError`` when it cannot be read as a name (a directory or a symlink to one, no permission, bytes
    that are not UTF-8)."""
    cur = Path(root) / "CURRENT"
    try:
        return cur.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{cur} cannot be read as a version name: {exc}") from None


def resolve(path: str | os.PathLike) -> Path:
    p = Path(path)
    if (p / "manifest.json").is_file():
        return p
    cur = p / "CURRENT"
    if cur.is_file():
        name = read_current(p) or ""
        target = version_dir(p, name)
        if not (target / "manifest.json").is_file():
            raise BundleError(f"{cur} names {name!r} but {target} has no manifest.json")
        return target
    if not p.exists():
        raise BundleError(f"{p} does not exist")
    if cur.is_symlink() and not cur.exists():
        raise BundleError(f"{cur} is a symbolic link to nothing ({os.readlink(cur)})")
    if cur.exists():                    # not a file (is_file above follows links)
        raise BundleError(f"{cur} is a directory, not a file naming a version" if cur.is_dir() else
                          f"{cur} is not a regular file")
    raise BundleError(f"{p} is neither a bundle (manifest.json) nor a root with CURRENT")


def _load_manifest(d: Path) -> dict:
    try:
        m = json.loads((d / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{d / 'manifest.json'}: unreadable: {exc}") from None
    if not isinstance(m, dict):
        raise BundleError(f"{d / 'manifest.json'}: not a JSON object")
    # a bundle written before manifests carried a digest has none (the saved-format fixture)
    if not manifest_intact(m):
        raise BundleError("manifest.json: sha256 mismatch (its content changed since the build)")
    missing = [k for k in REQUIRED_KEYS if k not in m]
    if missing:
        raise BundleError(f"manifest.json: missing key(s) {', '.join(missing)}")
    if m["format_version"] != FORMAT_VERSION:
        raise BundleError(f"manifest.json: format_version {m['format_version']} (expected {FORMAT_VERSION})")
    _check_structure(m)
    return m


def _check_structure(m: dict) -> None:
    """The manifest's entries that the server, ``recserve-train verify`` and ``evaluate`` read, each of the
    type they read it as (``BundleError`` naming the first that is not)."""
    from recserve._core.candidates import MAX_EF, finite_number, int_in

    def bad(what: str) -> BundleError:
        return BundleError(f"manifest.json: {what}")

    if not isinstance(m["version"], str) or not m["version"]:
        raise bad(f"version: a non-empty string, not {m['version']!r}")
    files = m["files"]
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise bad(f"files: a map of file name -> sha256 (hex string), not {str(files)[:80]!r}")
    for key in ("index", "feature_schema", "training"):
        if not isinstance(m[key], dict):
            raise bad(f"{key}: a JSON object, not {str(m[key])[:80]!r}")
    for key in ("ef", "similar_rows_ef"):
        ef = m["index"].get(key, 1)
        if not int_in(ef, 1, MAX_EF):
            raise bad(f"index.{key}: an integer in [1, {MAX_EF}], not {ef!r}")
    names = m["feature_schema"].get("feature_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise bad(f"feature_schema.feature_names: a list of the ranker's feature names, not {str(names)[:80]!r}")
    cut = m["training"].get("cut")
    if finite_number(cut) is None:
        raise bad(f"training.cut: the test cut (finite unix seconds), not {cut!r}")


def index_header(path: str | os.PathLike) -> tuple[int, int]:
    """(element count, dim) of a float hnswlib index file, read from its header without loading it.

    Raises :class:`BundleError` when the header is short or inconsistent with itself or the file size."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(_HNSW_HEADER.size)
        size = p.stat().st_size
    except OSError as exc:
        raise BundleError(f"{p.name}: unreadable: {exc}") from None
    if len(raw) < _HNSW_HEADER.size:
        raise BundleError(f"{p.name}: not an hnswlib index (header truncated)")
    (off0, max_el, count, per_el, label_off, data_off, _level, _entry, _max_m, max_m0, _m, _mult,
     _efc) = _HNSW_HEADER.unpack(raw)
    data_size = label_off - data_off
    if off0 != 0 or count > max_el or data_off != max_m0 * 4 + 4 or per_el != label_off + _HNSW_LABEL \
            or data_size <= 0 or data_size % 4:
        raise BundleError(f"{p.name}: not an hnswlib index (inconsistent header)")
    if size < _HNSW_HEADER.size + count * (per_el + 4):
        raise BundleError(f"{p.name}: truncated ({size} bytes for {count} elements)")
    return int(count), data_size // 4


def index_whole(path: str | os.PathLike) -> bool:
    """Whether an hnswlib index file (whose :func:`index_header` passed) ends exactly after its last
    element's upper-level links: a file cut there (about 1 % of it) passes :func:`index_header`. Reads the
    part after the level-0 data, one size per element (the trainer's check of what it wrote)."""
    with open(path, "rb") as f:
        count, per_el = _HNSW_HEADER.unpack(f.read(_HNSW_HEADER.size))[2:4]
        f.seek(_HNSW_HEADER.size + count * per_el)
        tail = f.read()
    pos = 0
    for _ in range(count):
        if pos + 4 > len(tail):
            return False
        pos += 4 + int.from_bytes(tail[pos:pos + 4], "little")
    return pos == len(tail)


def verify(path: str | os.PathLike) -> dict:
    """Check a bundle and return its manifest; raises :class:`BundleError` naming the first problem."""
    import numpy as np

    from recserve._core.candidates import check_params
    from recserve._core.cross import FeatureSchema
    from recserve._core.tables import TableError, TableReader

    d = resolve(path)
    m = _load_manifest(d)
    files = m["files"]
    for name in REQUIRED_FILES:
        if name not in files:
            raise BundleError(f"manifest.json: {name} is not listed in files")
    for name, digest in files.items():
        p = d / name
        if "/" in name or name.startswith("."):
            raise BundleError(f"manifest.json: invalid file name {name!r}")
        if not p.is_file():
            raise BundleError(f"{name}: missing")
        if sha256_file(p) != digest:
            raise BundleError(f"{name}: sha256 mismatch (file changed since the build)")
    extra = sorted(p.name for p in d.iterdir() if p.is_file() and p.name not in files
                   and p.name not in UNCHECKED and not p.name.startswith("."))
    if extra:
        raise BundleError(f"{extra[0]}: not listed in the manifest")
    try:
        schema = FeatureSchema.from_dict(m["feature_schema"])
    except (TypeError, ValueError) as exc:
        raise BundleError(f"manifest.json: bad feature_schema: {exc}") from None
    try:
        check_params(m["params"])
    except ValueError as exc:
        raise BundleError(f"manifest.json: {exc}") from None
    try:
        with TableReader(d / "tables.lmdb") as t:
            n_items = t.n_ids("item")
            n_users = t.n_ids("user")
            try:
                dim = int(m["dim"])
            except (TypeError, ValueError):
                raise BundleError(f"manifest.json: dim must be an integer, not {m['dim']!r}") from None
            checks = [("item_emb", "float32", (n_items, dim)), ("user_emb", "float32", (n_users, dim)),
                      ("item_feats", "float32", (n_items, len(schema.item_columns))),
                      ("user_feats", "float32", (n_users, len(schema.user_columns))),
                      ("hist_indptr", "int64", (n_users + 1,)), ("i2i_rows", "int32", None),
                      ("pop_rows", "int32", (n_items,)), ("trend_rows", "int32", (n_items,)),
                      ("hist_items", "int32", None), ("hist_ts", "float64", None), ("hist_event", "int8", None)]
            for name, dtype, shape in checks:
                meta = t.array_meta(name)
                if meta["dtype"] != dtype:
                    raise BundleError(f"tables.lmdb: {name} has dtype {meta['dtype']}, expected {dtype}")
                if shape is not None and tuple(meta["shape"]) != shape:
                    raise BundleError(f"tables.lmdb: {name} has shape {tuple(meta['shape'])}, expected {shape}")
            if t.columns("item_feats") != list(schema.item_columns):
                raise BundleError("tables.lmdb: item_feats columns differ from the feature schema")
            if t.columns("user_feats") != list(schema.user_columns):
                raise BundleError("tables.lmdb: user_feats columns differ from the feature schema")
            nh = t.array_meta("hist_items")["shape"][0]
            if int(t.array("hist_indptr")[-1]) != nh:
                raise BundleError("tables.lmdb: hist_indptr does not end at len(hist_items)")
            for name in ("hist_ts", "hist_event"):
                if t.array_meta(name)["shape"] != [nh]:
                    raise BundleError(f"tables.lmdb: {name} length differs from hist_items")
            if t.array_meta("i2i_scores")["shape"] != t.array_meta("i2i_rows")["shape"] or \
                    t.array_meta("i2i_rows")["shape"][0] != n_items:
                raise BundleError("tables.lmdb: i2i_rows / i2i_scores shapes disagree with the item count")
            n_cat = t.n_ids("category")
            if t.array_meta("pop_cat_indptr")["shape"] != [n_cat + 1]:
                raise BundleError(f"tables.lmdb: pop_cat_indptr must have {n_cat + 1} entries")
            ranged = [("hist_items", 0), ("i2i_rows", -1), ("pop_rows", 0), ("trend_rows", 0), ("pop_cat_rows", 0)]
            if t.has_array("item_price"):           # optional: bundles without it filter on the feature
                meta = t.array_meta("item_price")
                if meta["dtype"] != "float64" or tuple(meta["shape"]) != (n_items,):
                    raise BundleError(f"tables.lmdb: item_price must be float64 with {n_items} entries, got "
                                      f"{meta['dtype']} {tuple(meta['shape'])}")
            if t.has_array("item_created"):         # optional: bundles without it read the created_days feature
                meta = t.array_meta("item_created")
                if meta["dtype"] != "float64" or tuple(meta["shape"]) != (n_items,):
                    raise BundleError(f"tables.lmdb: item_created must be float64 with {n_items} entries, got "
                                      f"{meta['dtype']} {tuple(meta['shape'])}")
            if t.has_array("sim_rows"):             # optional: bundles without it search SimilarItems live
                meta = t.array_meta("sim_rows")
                if meta["dtype"] != "int32" or len(meta["shape"]) != 2 or meta["shape"][0] != n_items:
                    raise BundleError(f"tables.lmdb: sim_rows must be int32 with {n_items} rows, got "
                                      f"{meta['dtype']} {tuple(meta['shape'])}")
                ranged.append(("sim_rows", -1))
            if _check_consumed(t, n_users):     # optional: bundles without them take consumed from hist_items
                ranged.append(("consumed_items", 0))
            if _check_countries(t, n_users):    # optional: bundles without them serve the global trending list
                ranged.append(("country_rows", 0))
            elif m["params"].get("warm_trending") == "country":
                raise BundleError("manifest: params.warm_trending is 'country' (its ranker was trained on the "
                                  "users' country lists), but tables.lmdb holds no country lists")
            for name, lo in ranged:
                a = t.array(name)
                if a.size and (int(a.min()) < lo or int(a.max()) >= n_items):
                    raise BundleError(f"tables.lmdb: {name} has item rows outside [{lo}, {n_items})")
            if schema.n_categories > n_cat:       # share columns for the first n_categories codes
                raise BundleError(f"feature_schema has share columns for {schema.n_categories} categories, "
                                  f"tables {n_cat} categories")
            for name in ("item_feats", "user_feats"):       # NaN is a missing value; an infinity no request uses
                bad = np.isinf(t.array(name)).any(axis=0)
                if bad.any():
                    col = t.columns(name)[int(np.flatnonzero(bad)[0])]
                    raise BundleError(f"tables.lmdb: {name} column {col!r} holds infinite values")
    except TableError as exc:
        raise BundleError(f"tables.lmdb: {exc}") from None
    counts = m["counts"]
    if not isinstance(counts, dict) or counts.get("items") != n_items or counts.get("users") != n_users:
        raise BundleError(f"manifest counts {counts} differ from tables ({n_users} users, {n_items} items)")
    n_index, index_dim = index_header(d / "index.hnsw")
    if n_index != n_items:
        raise BundleError(f"index.hnsw holds {n_index} items, tables {n_items}")
    if index_dim != dim:
        raise BundleError(f"index.hnsw has dim {index_dim}, manifest {dim}")
    _check_ranker(d / "ranker.txt", len(schema.names))
    return m


CONSUMED = ("consumed_users", "consumed_indptr", "consumed_items")


def _check_consumed(t, n_users: int) -> bool:
    """The consumed-item tables (``trainer.features.consumed``), when the bundle has them (True): sorted
    distinct user rows, an indptr over them ending at the item count, each user's rows sorted and distinct."""
    import numpy as np

    have = [t.has_array(n) for n in CONSUMED]
    if not any(have):
        return False
    if not all(have):
        raise BundleError(f"tables.lmdb: {', '.join(CONSUMED)} come together; "
                          f"{CONSUMED[have.index(False)]} is missing")
    for name, dtype in zip(CONSUMED, ("int32", "int64", "int32")):
        meta = t.array_meta(name)
        if meta["dtype"] != dtype or len(meta["shape"]) != 1:
            raise BundleError(f"tables.lmdb: {name} must be a 1-D {dtype} array, got {meta['dtype']} "
                              f"{tuple(meta['shape'])}")
    users, indptr, items = (np.asarray(t.array(n), np.int64) for n in CONSUMED)
    if len(users) and (users[0] < 0 or users[-1] >= n_users or np.any(np.diff(users) <= 0)):
        raise BundleError(f"tables.lmdb: consumed_users must be increasing user rows in [0, {n_users})")
    if len(indptr) != len(users) + 1 or indptr[0] != 0 or indptr[-1] != len(items) or np.any(np.diff(indptr) < 0):
        raise BundleError("tables.lmdb: consumed_indptr must rise from 0 to len(consumed_items), one step per user")
    rising = np.diff(items) > 0
    rising[indptr[1:-1][(indptr[1:-1] > 0) & (indptr[1:-1] < len(items))] - 1] = True     # a new user's first row
    if not rising.all():
        raise BundleError("tables.lmdb: consumed_items must hold each user's rows sorted and distinct")
    return True


COUNTRIES = {"user_country": "int32", "country_indptr": "int64", "country_rows": "int32",
             "country_scores": "float32", "country_weight": "float64"}


def _check_countries(t, n_users: int) -> bool:
    """The per-country trending lists (``trainer.countries``), when the bundle has them (True): a country code
    per user (-1: none) among the ``country`` ids, an indptr over the codes ending at the list's length, a
    score per listed row and a finite weight >= 0 per country."""
    import numpy as np

    have = [t.has_array(n) for n in COUNTRIES]
    if not any(have):
        return False
    if not all(have) or not t.has_ids("country"):
        missing = [n for n, h in zip(COUNTRIES, have) if not h] or ["the country ids"]
        raise BundleError(f"tables.lmdb: {', '.join(COUNTRIES)} and the country ids come together; "
                          f"{missing[0]} is missing")
    for name, dtype in COUNTRIES.items():
        meta = t.array_meta(name)
        if meta["dtype"] != dtype or len(meta["shape"]) != 1:
            raise BundleError(f"tables.lmdb: {name} must be a 1-D {dtype} array, got {meta['dtype']} "
                              f"{tuple(meta['shape'])}")
    n_c = t.n_ids("country")
    code, indptr, rows, scores, weight = (np.asarray(t.array(n)) for n in COUNTRIES)
    if len(code) != n_users or (len(code) and (code.min() < -1 or code.max() >= n_c)):
        raise BundleError(f"tables.lmdb: user_country must hold a code in [-1, {n_c}) for each of {n_users} users")
    if len(indptr) != n_c + 1 or indptr[0] != 0 or indptr[-1] != len(rows) or np.any(np.diff(indptr) < 0):
        raise BundleError("tables.lmdb: country_indptr must rise from 0 to len(country_rows), one step per country")
    if len(scores) != len(rows) or not np.isfinite(scores).all():
        raise BundleError("tables.lmdb: country_scores must hold a finite score per row of country_rows")
    inner = np.ones(max(len(rows) - 1, 0), bool)          # pairs of neighbours within one country's list
    inner[indptr[1:-1][(indptr[1:-1] > 0) & (indptr[1:-1] < len(rows))] - 1] = False
    if np.any(np.diff(scores)[inner] > 0):
        raise BundleError("tables.lmdb: each country's list in country_rows must be best first")
    key = np.repeat(np.arange(n_c, dtype=np.int64), np.diff(indptr)) * max(int(rows.max(initial=0)) + 1, 1) + rows
    if len(np.unique(key)) != len(key):
        raise BundleError("tables.lmdb: each country's list in country_rows must hold distinct rows")
    if len(weight) != n_c or not (np.isfinite(weight) & (weight >= 0)).all():
        raise BundleError(f"tables.lmdb: country_weight must hold a finite weight >= 0 for each of {n_c} countries")
    return True


def _check_ranker(path: Path, n_features: int) -> None:
    """The ranker parses as a LightGBM text model (our own parser: nothing in it runs) over the
    schema's feature columns."""
    from recserve._core.forest import Forest

    try:
        forest = Forest.from_model_string(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"ranker.txt: not a usable LightGBM model: {str(exc).splitlines()[0][:200]}") from None
    if forest.num_features != n_features:
        raise BundleError(f"ranker.txt: the model reads {forest.num_features} features, the schema has "
                          f"{n_features}")


class Bundle:
    """An opened bundle (open it in each process after fork)."""

    def __init__(self, path: Path, manifest: dict):
        import hnswlib

        from recserve._core.cross import FeatureSchema
        from recserve._core.tables import TableReader

        self.path = path
        self.manifest = manifest
        self.version = manifest["version"]
        self.params = manifest["params"]
        self.schema = FeatureSchema.from_dict(manifest["feature_schema"])
        self.index = None
        self.tables = TableReader(path / "tables.lmdb")
        try:
            self._load(hnswlib)
        except BaseException:
            self.close()                 # a refused bundle must not keep its LMDB environment open
            raise

    def _load(self, hnswlib) -> None:
        """Everything after the tables are open (the caller closes them if this raises)."""
        path, manifest = self.path, self.manifest
        self.item_emb = self.tables.array("item_emb", "float32")
        self.item_feats = self.tables.array("item_feats", "float32", len(self.schema.item_columns))
        self.user_feats = self.tables.array("user_feats", "float32", len(self.schema.user_columns))
        self.n_items, self.dim = self.item_emb.shape
        self.n_users = self.user_feats.shape[0]
        self.index = hnswlib.Index(space="cosine", dim=self.dim)
        try:
            self.index.load_index(str(path / "index.hnsw"), max_elements=self.n_items)
        except (RuntimeError, ValueError, MemoryError) as exc:
            raise BundleError(f"index.hnsw: cannot load: {str(exc).splitlines()[0] if str(exc) else exc!r}") \
                from None
        if self.index.get_current_count() != self.n_items:
            raise BundleError(f"index.hnsw holds {self.index.get_current_count()} items, tables {self.n_items}")
        self.index.set_ef(int(manifest["index"].get("ef", self.params.get("ef", 100))))
        # the end of the data the bundle was built from: it holds its users' events dated before this
        # (the trainer's ``now``: the test cut, or one second after the newest interaction with no holdout)
        self.data_end = float(self.tables.meta("now", manifest["training"]["cut"]))
        try:
            self.ranker_text = (path / "ranker.txt").read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise BundleError(f"ranker.txt: not UTF-8 text ({exc.reason} at byte {exc.start})") from None

    def item_created(self):
        """float64 creation time of each item (unix seconds), or None when the bundle does not know them:
        the exact times where the bundle stores them, else its float32 ``created_days`` feature."""
        import numpy as np

        if self.tables.has_array("item_created"):
            return np.asarray(self.tables.array("item_created"), np.float64)
        cols = self.tables.columns("item_feats") or list(self.schema.item_columns)
        if "created_days" not in cols:
            return None
        return np.asarray(self.item_feats[:, cols.index("created_days")], np.float64) * 86400.0

    @classmethod
    def open(cls, path: str | os.PathLike, verify: bool = True) -> "Bundle":
        d = resolve(path)
        m = globals()["verify"](d) if verify else _load_manifest(d)
        return cls(d, m)

    def close(self) -> None:
        if self.tables is not None:
            self.tables.close()
            self.tables = None
            self.item_emb = self.item_feats = self.user_feats = None
            self.index = None

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
