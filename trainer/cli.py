"""``recserve-train``: synth | import movielens | build | verify | evaluate.

Errors print one line ``recserve-train: error: <reason>`` on stderr and exit non-zero (2 for bad input
data or arguments, 3 for a bad bundle, 1 when the disk fails a write, 128 + the signal when interrupted: 130
for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP, each handled as Ctrl-C is).
``build`` and ``evaluate`` show progress bars on stderr when it is a terminal (``--progress`` /
``--no-progress`` force them on / off).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time

from recserve.cliparser import Parser, reason
from trainer.argtypes import number, number_list, positive_int, seed


def _progress_switch(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars on stderr (default: when stderr is a terminal)")


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="recserve-train", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", help="generate synthetic data in the input format")
    s.add_argument("out")
    s.add_argument("--users", type=positive_int, default=1000)
    s.add_argument("--items", type=positive_int, default=500)
    s.add_argument("--interactions", type=positive_int, default=None, help="approximate total (default 20 per user)")
    s.add_argument("--days", type=positive_int, default=180, help="days the interactions span")
    s.add_argument("--seed", type=seed, default=0)
    s.add_argument("--format", choices=["csv", "parquet"], default="csv", help="the tables' file format")
    s.add_argument("--devices", type=number(float, 0, 10), default=0.0, metavar="WEIGHT",
                   help="give each session a device whose own taste leans its intent by WEIGHT (e.g. 0.5), "
                        "written as the interactions' device column (default 0: no devices)")
    s.add_argument("--countries", type=number(float, 0, 10), default=0.0, metavar="WEIGHT",
                   help="give each users' country favourites of its own: every item's popularity there is "
                        "tilted by exp(WEIGHT * N(0, 1)) (e.g. 1; default 0: one popularity everywhere)")

    i = sub.add_parser("import", help="convert a public data set to the input format")
    i.add_argument("kind", choices=["movielens"])
    i.add_argument("path")
    i.add_argument("out")
    i.add_argument("--format", choices=["csv", "parquet"], default="csv", help="the tables' file format")

    b = sub.add_parser("build", help="train a bundle from a data directory")
    b.add_argument("out", help="bundle root (gets <version>/ and CURRENT)")
    b.add_argument("--data", required=True, help="the data directory (interactions, items and optionally users)")
    b.add_argument("--seed", type=seed, default=0)
    b.add_argument("--factors", type=number_list(int, 1, 4096), default=[64],
                   help="embedding size, or a comma list (e.g. 16,32,64) to pick on the label window")
    b.add_argument("--embed", choices=["als", "svd"], default="als")
    b.add_argument("--als-reg", type=number(float, 0), default=20.0, help="ALS regularisation (implicit's units)")
    b.add_argument("--threads", type=number(int, 1, 1024), default=2, help="threads for training (ALS, LightGBM)")
    b.add_argument("--holdout", type=number(float, 0, 0.99), default=0.1,
                   help="newest share held out for evaluation; 0 trains the served bundle on everything")
    b.add_argument("--ranker-users", type=positive_int, default=3000, help="users whose rows train the ranker")
    b.add_argument("--ranker-trees", type=positive_int, default=None,
                   help="exactly N trees, no early stopping (a ranker of known size for load tests)")
    b.add_argument("--share-categories", type=number(int, 0, 4096), default=32,
                   help="category share features for at most N categories, those with the most items "
                        "(each is a user-table column and a column of every ranker row)")
    b.add_argument("--country-min-users", type=number(int, 0, 1 << 30), default=20, metavar="N",
                   help="trending per country (a cold request's order, a warm one's popular source) for every "
                        "country of the users file with at least N users who interacted (0: the global trending "
                        "list only)")
    b.add_argument("--warm-trending", choices=["country", "global"], default="country",
                   help="the popular source of users with a history: their country's trending list where the "
                        "bundle has one (the ranker is trained on it), or the global list")
    b.add_argument("--i2i-model", choices=["auto", "ease", "cosine"], default=None,
                   help="item-to-item model: EASE (a dense n x n inverse: minutes and GBs at 10,000 items) or "
                        "co-occurrence cosine (any size); auto (the default) tunes both on the validation "
                        "window for catalogues up to --ease-max-items items (with --no-tune: EASE there) and "
                        "takes cosine above")
    b.add_argument("--ease-max-items", type=number(int, 0, 1 << 20), default=None, metavar="N",
                   help="with --i2i-model auto, the largest catalogue EASE is tried on (default 10,000)")
    b.add_argument("--no-tune", action="store_true",
                   help="a faster build: the default serving parameters (recency decays and mix, i2i model, "
                        "country prior, source quotas, HNSW ef and similar_ef), not tuned on the validation window")
    b.add_argument("--no-similar-lists", action="store_true",
                   help="do not store each item's SimilarItems neighbours (n_items x 85 int32); the server "
                        "then searches the index for every SimilarItems")
    b.add_argument("--label-windows", type=number(int, 1, 100), default=2,
                   help="successive label windows for ranker rows (fewer when the data runs out)")
    b.add_argument("--label-split", choices=["time", "user", "user-random"], default="time",
                   help="ranker labels: the newest time window, features fitted on what is older (time); or "
                        "each user's newest (user) or random (user-random) share of her interactions, features "
                        "fitted on the rest at the test cut, partly later than the labels")
    b.add_argument("--drop-unknown", action="store_true", help="drop interactions with unknown items")
    b.add_argument("--evaluate", action="store_true",
                   help="evaluate on the held-out data after building (the default when --holdout > 0)")
    b.add_argument("--no-evaluate", action="store_true", help="skip the evaluation at the end of the build")
    b.add_argument("--eval-users", type=positive_int, default=2000,
                   help="evaluate at most N held-out users, drawn with --seed")
    _progress_switch(b)

    v = sub.add_parser("verify", help="check a bundle (checksums, format, schema)")
    v.add_argument("bundle")

    e = sub.add_parser("evaluate", help="evaluate a bundle on the held-out newest interactions")
    e.add_argument("bundle")
    e.add_argument("--data", required=True, help="the data directory (the bundle's own, or newer logs)")
    e.add_argument("--drop-unknown", action="store_true",
                   help="drop interactions with items the data's items table does not know, and count them")
    e.add_argument("--eval-users", type=positive_int, default=None,
                   help="evaluate at most N held-out users (default: the build's --eval-users)")
    e.add_argument("--seed", type=seed, default=None,
                   help="the seed that draws them (default: the bundle's build seed)")
    _progress_switch(e)
    for sp in (s, i, b, e):
        _say_defaults(sp)
    return p


def _say_defaults(parser) -> None:
    """Each option's help names its default, unless it says one already or has none to say (a switch)."""
    for action in parser._actions:
        if not action.option_strings or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            continue
        if "default" in (action.help or ""):
            continue
        d = action.default
        said = ",".join(map(str, d)) if isinstance(d, list) else str(d)
        action.help = f"{action.help} (default: {said})" if action.help else f"default: {said}"


def _fail(msg: str, code: int) -> int:
    print(f"recserve-train: error: {msg}", file=sys.stderr)
    return code


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C raises KeyboardInterrupt: the same clean-up runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum, _frame):
    raise Stopped(signum)


@contextlib.contextmanager
def _stop_signals_as_ctrl_c(exiting: bool = False):
    """SIGTERM (``timeout``, systemd, Kubernetes) and SIGHUP (the terminal closed) raise :class:`Stopped`
    while the block runs, unless they are ignored (``nohup``) or handled already; main thread only.
    ``exiting`` (the process ends after the block): the block's end ignores them, Ctrl-C too, so that one
    arriving while the interpreter exits does not turn a finished command into a silent 143."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = [getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    old = {s: signal.getsignal(s) for s in stops}
    old = {s: h for s, h in old.items() if h is signal.SIG_DFL}
    for s in old:
        signal.signal(s, _raise_stopped)
    try:
        yield
    finally:
        if exiting:
            for s in [*old, signal.SIGINT]:
                signal.signal(s, signal.SIG_IGN)
        else:
            for s, h in old.items():
                signal.signal(s, h)


def entry() -> int:
    """The ``recserve-train`` command: :func:`main`, then the process exits, its code the command's (a
    build that published exits 0 even when SIGTERM comes while the interpreter shuts down, some 0.2 s)."""
    return main(exiting=True)


def main(argv: list[str] | None = None, exiting: bool = False) -> int:
    args = _parser().parse_args(argv)
    published = _current(args.out) if args.cmd == "build" else None
    with _stop_signals_as_ctrl_c(exiting):
        try:
            code = _checked(args)
            if exiting:         # what is left to write is written while a stop signal can still end it
                _flush()
            return code
        except KeyboardInterrupt as exc:    # Ctrl-C, SIGTERM, SIGHUP: one line saying what was left, no traceback
            signum = getattr(exc, "signum", signal.SIGINT)
            return _fail(_interrupted(args, published, signum), 128 + int(signum))


def _flush() -> None:
    """Flushes stdout and stderr where they are open (a closed one is None); a reader gone (a broken
    pipe) is Python's to report at exit, as before."""
    for f in (sys.stdout, sys.stderr):
        if f is not None:
            try:
                f.flush()
            except (OSError, ValueError):
                pass


def _checked(args) -> int:
    """``_run``, its errors as one line and an exit code."""
    import lmdb

    from recserve.bundle import BundleError
    from trainer.io import DataError

    try:
        return _run(args)
    except DataError as exc:
        return _fail(str(exc), 2)
    except BundleError as exc:
        return _fail(str(exc), 3)
    except (ValueError, FileExistsError) as exc:
        return _fail(reason(exc), 2)
    except lmdb.Error as exc:           # a build's table write (the disk), or a bundle's tables when read
        return _fail(reason(exc), 1 if args.cmd == "build" else 3)
    except OSError as exc:              # the disk: cannot write, no space left, ...
        return _fail(reason(exc), 1)


def _current(root: str) -> str | None:
    """What ``root/CURRENT`` says (None when there is none or it cannot be read)."""
    try:
        with open(os.path.join(root, "CURRENT"), encoding="utf-8") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _interrupted(args, published: str | None, signum: int = signal.SIGINT) -> str:
    """What an interrupted command left behind, as one line."""
    what = "interrupted" if signum == signal.SIGINT else f"interrupted by {signal.Signals(signum).name}"
    if args.cmd == "build":
        from trainer.writer import PUBLISHED

        now = _current(args.out)
        if now != published and now in PUBLISHED:
            return f"{what}; {args.out}/CURRENT names the new version {now} already"
        if now is None and published is not None and not os.path.lexists(os.path.join(args.out, "CURRENT")):
            return f"{what}; nothing was published ({args.out}/CURRENT is gone)"
        if now != published:            # another build published meanwhile
            return f"{what}; nothing was published ({args.out}/CURRENT names {now}, another build's)"
        return f"{what}; nothing was published"
    if args.cmd in ("synth", "import"):
        return f"{what}; nothing partly written in {args.out}"
    return what


def _run(args) -> int:
    from trainer import progress
    from trainer.timing import Timer

    progress.configure(getattr(args, "progress", None))

    if args.cmd in ("synth", "import"):     # written beside the output first, then moved in
        bad_out = _unwritable_out(args.out, "data directory", beside=True)
        if bad_out:
            return _fail(bad_out, 2)
    if args.cmd == "synth":
        from trainer.datawrite import write_dataset
        from trainer.synth import synth

        t = time.perf_counter()
        ds, _ = synth(args.users, args.items, seed=args.seed, interactions=args.interactions, days=args.days,
                      device_effect=args.devices, country_effect=args.countries)
        written = write_dataset(ds, args.out, args.format)
        print(f"synth: {len(ds)} interactions, {ds.n_users} users, {ds.n_items} items "
              f"({int((~_seen(ds)).sum())} never interacted) -> {args.out} "
              f"{written} in {time.perf_counter() - t:.2f}s")
        return 0
    if args.cmd == "import":
        from trainer.datawrite import write_dataset
        from trainer.movielens import load_movielens

        ds = load_movielens(args.path)
        written = write_dataset(ds, args.out, args.format)
        print(f"import: {len(ds)} interactions, {ds.n_users} users, {ds.n_items} items -> {args.out} {written}")
        return 0
    if args.cmd == "build":
        from trainer import build as builder
        from trainer import report
        from trainer.evaluate import format_table
        from trainer.io import load_dataset

        if args.evaluate and args.no_evaluate:
            return _fail("--evaluate and --no-evaluate contradict each other", 2)
        if args.evaluate and args.holdout == 0:
            return _fail("--evaluate needs held-out data: --holdout 0 holds none out", 2)
        if args.ease_max_items is not None and args.i2i_model not in (None, "auto"):
            return _fail(f"--ease-max-items applies to --i2i-model auto, not {args.i2i_model}", 2)
        bad_out = _unwritable_out(args.out, "bundle root")
        if bad_out:
            return _fail(bad_out, 2)
        timer = Timer()
        # without progress bars (not a terminal, --no-progress), a build that fails on its data prints only the
        # reason: the load step's lines (in the summary anyway) would come before it; the checks that follow
        # in build() run before its first step line
        with timer("load", quiet=not progress.enabled()):
            ds = load_dataset(args.data, drop_unknown=args.drop_unknown)
        _say_dropped(ds.report)
        _say_joined(ds.report)
        unused = report.columns_not_used(ds.report)
        if unused:
            print(f"columns {report.NOT_USED}: {report.not_used_text(unused)}", file=sys.stderr)
        _say_files_not_read(args.data, ds.report)
        factors = args.factors
        cfg = {"seed": args.seed, "factors": factors if len(factors) > 1 else factors[0], "embed": args.embed,
               "als_reg": args.als_reg, "threads": args.threads, "holdout": args.holdout,
               "ranker_users": args.ranker_users, "label_windows": args.label_windows, "label_split": args.label_split,
               "tune": not args.no_tune, "ranker_trees": args.ranker_trees,
               "share_categories": args.share_categories, "country_min_users": args.country_min_users,
               "warm_trending": args.warm_trending,
               "similar_lists": not args.no_similar_lists, "eval_users": args.eval_users}
        cfg.update({k: v for k, v in (("i2i_model", args.i2i_model), ("ease_max_items", args.ease_max_items))
                    if v is not None})      # else the build's defaults
        results = []

        def evaluate(staged):           # on the complete version, before CURRENT names it
            with timer("evaluate"):
                res = builder.evaluate_bundle(staged, ds, max_users=args.eval_users, seed=args.seed,
                                              threads=args.threads)
                builder.record_evaluation(staged, res)
            results.append(res)

        evaluated = not args.no_evaluate and args.holdout > 0
        path = builder.build(ds, args.out, cfg, timer=timer, before_publish=evaluate if evaluated else None,
                             evaluated=evaluated)
        for res in results:
            print(format_table(res))
        m = json.loads((path / "manifest.json").read_text())
        windows = len(m["training"]["ranker"].get("label_windows", [None] * args.label_windows))
        if windows < args.label_windows:
            print(f"label windows: {windows} of the {args.label_windows} asked for (the data ran out)",
                  file=sys.stderr)
        print(timer.summary(), file=sys.stderr)
        tr = m["training"]
        print(f"built {path} ({m['counts']['users']} users, {m['counts']['items']} items, "
              f"{m['counts']['interactions']} training interactions; embedding {tr['embedding']}; "
              f"index recall@10 {m['index']['recall_at_k']['recall']}; ranker {_ranker_line(tr['ranker'])}; "
              f"decay_short {m['params']['decay_short']} alpha {m['params']['alpha']})")
        if n := ds.report.get("repeated_interactions"):
            print(f"note: {n} of {ds.report['interactions']} interactions repeat another in every column (user, "
                  "item, event, timestamp, value, device); read as they are: a log appended twice would show here",
                  file=sys.stderr)
        if args.holdout > 0:
            why = "for its evaluation" if evaluated else "(not evaluated: --no-evaluate)"
            held, total = m["counts"]["held_out"], m["counts"]["interactions_total"]
            asked = "" if abs(held / total - args.holdout) <= 0.1 * args.holdout else \
                f" (not the {_percent(args.holdout)}% asked: the interactions at one time are all on one side of " \
                "the cut)"
            print(f"note: the newest {_percent(held / total)}% ({held} of {total}) of the interactions were held out "
                  f"of this bundle {why}{asked}; build the bundle to serve with --holdout 0", file=sys.stderr)
        return 0
    if args.cmd == "verify":
        from recserve.bundle import MANIFEST_DIGEST, verify

        m = verify(args.bundle)
        unsealed = "" if MANIFEST_DIGEST in m else (f"; the manifest is not sealed (no {MANIFEST_DIGEST}: written "
                                                    "before manifests carried a digest, or the key removed), so "
                                                    "its values are not checked")
        print(f"ok: {m['version']} ({len(m['files'])} files, {m['counts']['users']} users, "
              f"{m['counts']['items']} items, {len(m['feature_schema']['feature_names'])} features){unsealed}")
        return 0
    if args.cmd == "evaluate":
        from recserve.bundle import resolve
        from trainer.build import evaluate_bundle, record_evaluation
        from trainer.evaluate import format_table
        from trainer.io import load_dataset

        ds = load_dataset(args.data, drop_unknown=args.drop_unknown)
        _say_dropped(ds.report)
        _say_joined(ds.report)
        _say_files_not_read(args.data, ds.report)
        path = resolve(args.bundle)
        res = evaluate_bundle(path, ds, max_users=args.eval_users, seed=args.seed)     # None: the build's
        print(format_table(res))
        built_from = json.loads((path / "manifest.json").read_text()).get("inputs")
        if built_from == ds.files:
            record_evaluation(path, res)
        else:       # other data (next week's logs, say): a fair test, but not the bundle's own record
            print(f"evaluate: {args.data} is not the data {path.name} was built from: its recorded evaluation "
                  "and reports are left as they are", file=sys.stderr)
        return 0
    return 1


def _ranker_line(r: dict) -> str:
    """The ranker's size and validation score (the full record is in the manifest's training.ranker)."""
    trees = r.get("best_iteration", r.get("trees", "?"))
    score = r.get("valid_ndcg@10")
    return f"{trees} trees" + (f", validation ndcg@10 {score}" if score is not None else "")


def _percent(share: float) -> str:
    """``share`` in percent, three significant digits, never in exponent form (0.0012, not 1.2e-03)."""
    import numpy as np

    return np.format_float_positional(100 * share, precision=3, unique=True, fractional=False, trim="-")


def _say_dropped(data_report: dict) -> None:
    """``--drop-unknown``'s count, on stderr (build and evaluate alike)."""
    if data_report.get("dropped_unknown_items"):
        print(f"dropped {data_report['dropped_unknown_items']} interaction(s) with unknown items", file=sys.stderr)


def _say_joined(data_report: dict) -> None:
    """One line on stderr naming the CSV files whose quoted values span lines (read as one value each, RFC
    4180; a stray quote reads the same and joins rows: the note says where to look)."""
    from trainer.io import joined_text

    if data_report.get("csv_lines_joined"):
        print(f"note: {joined_text(data_report)}; a stray quote does this too, joining rows", file=sys.stderr)


def _say_files_not_read(data: str, data_report: dict) -> None:
    """One line on stderr naming the files of the data directory that are no table (a misspelt name)."""
    from trainer.io import TABLE_EXTENSIONS

    unread = data_report.get("files_not_read")
    if unread:
        print(f"files in {data} not read: {', '.join(map(repr, unread))} (the tables are interactions, items and "
              f"users, each {', '.join(TABLE_EXTENSIONS)})", file=sys.stderr)


def _unwritable_out(out: str, what: str, beside: bool = False) -> str | None:
    """Why ``what`` (a bundle root, a data directory) cannot be written at ``out``, or None: checked before
    any work. ``beside``: the writer also makes a temporary directory beside ``out``."""
    from pathlib import Path

    p = Path(out)
    if p.is_symlink() and not p.exists():     # mkdir and rename would fail on it after all the work
        return f"{out}: a symbolic link to nothing ({os.readlink(p)})"
    if p.exists():
        if not p.is_dir():
            return f"{out}: exists and is not a directory (a {what} is one)"
        if _is_version(out):     # a root here would put CURRENT beside its manifest: verify refuses both
            return f"{out} is a bundle version, not a {what}"
        current = p / "CURRENT"
        if what == "bundle root" and current.is_dir() and not current.is_symlink():   # the rename would fail
            return f"{out}: its CURRENT is a directory (CURRENT is a file naming the served version)"
        if not _can_create_in(p):
            return f"{out}: not writable"
        parent = p.absolute().parent
        if beside and not _can_create_in(parent):
            return f"{out}: cannot write beside it in {parent} (not writable)"
        return None
    parent = next((a for a in p.absolute().parents if a.exists()), None)
    if parent is None or not parent.is_dir():
        return f"{out}: {parent} is not a directory"
    return None if _can_create_in(parent) else f"{out}: cannot create it in {parent} (not writable)"


def _is_version(out: str) -> bool:
    """Whether ``out`` is a bundle version directory (holds manifest.json)."""
    return os.path.exists(os.path.join(out, "manifest.json"))


def _can_create_in(directory) -> bool:
    """Whether a directory can be made in ``directory``: tried, not guessed from its mode bits (root may
    write anywhere by the bits, yet not in /proc or on a read-only mount)."""
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".recserve-probe-", dir=directory))
    except OSError:
        return False
    return True


def _seen(ds):
    import numpy as np

    return np.bincount(ds.item, minlength=ds.n_items) > 0


if __name__ == "__main__":
    sys.exit(entry())
