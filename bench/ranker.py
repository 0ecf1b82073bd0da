"""Ranker inference: recserve Forest.predict vs LightGBM Booster.predict(raw_score=True), one thread.

    python bench/ranker.py [--budget 3.0] [--quick]

For models of 100x31, 200x63 and 500x127 (trees x leaves), trained on synthetic data with 40 features
(num_threads=1, small min_data_in_leaf so the trees use their leaves), and batches of 1, 100, 500 and
2000 rows, prints the median and p99 time per batch of both, measured interleaved in one run (calls
alternate), the ratio of medians and the number of samples behind each p99 (about ``--budget`` seconds per
cell, at least 30: the largest cells get few, and their p99 is then near the maximum). Scores are checked
to be identical before timing. Then, for the 200x63 model at 500 rows: the same with 1% NaN in the rows
(the missing-value step), and the kernel's walk strategies side by side: the shipped pair layout
(siblings adjacent, fixed depth, no leaf checks), the previous lanes on 16-byte nodes with child indices
and leaf checks, and one row at a time as LightGBM walks; and the kernel's plain numpy reference
(``forest_reference``, every row walking the parsed trees one level at a time), with the speed-up over it.

``--compiled`` adds, for the 200x63 model at 500 rows, the two compile-to-native alternatives where
they are installed (they are not dependencies of recserve): treelite + tl2cgen (C code compiled by
gcc into a shared library) and lleaves (LLVM), with their compile times and whether their scores
equal LightGBM's bit for bit. ``pip install treelite tl2cgen lleaves "llvmlite<0.44"``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import Parser  # noqa: E402
from _timing import interleaved, summary  # noqa: E402
from trainer.argtypes import number  # noqa: E402
from _timing import machine as _machine  # noqa: E402

import lightgbm as lgb  # noqa: E402

from recserve._core.forest import Forest, forest_reference, parsed_trees  # noqa: E402

N_FEATURES = 40


def machine() -> str:
    return f"{_machine()}, load avg={os.getloadavg()[0]:.2f}, lightgbm={lgb.__version__}"


def synth(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    X = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    X[:, 30:] = np.round(X[:, 30:] * 2)                       # a few coarse, count-like features
    w = rng.normal(size=12)
    y = (X[:, :12] @ w + np.sin(3 * X[:, 12]) * X[:, 13] + np.abs(X[:, 14] - X[:, 15])
         + 0.5 * (X[:, 30] > 1) + 0.3 * rng.normal(size=n))
    return X, y


def train(trees: int, leaves: int, n_train: int, seed: int = 0) -> lgb.Booster:
    X, y = synth(np.random.default_rng(seed), n_train)
    params = {"objective": "regression", "num_leaves": leaves, "min_data_in_leaf": 5,
              "learning_rate": 0.05, "num_threads": 1, "verbose": -1, "seed": seed}
    return lgb.train(params, lgb.Dataset(X, y), num_boost_round=trees)


def repeats_for(funcs: dict, budget: float, lo: int, hi: int) -> int:
    """Enough interleaved repeats to spend about ``budget`` seconds on this cell."""
    t0 = time.perf_counter()
    for f in funcs.values():
        f()
    per_round = max(time.perf_counter() - t0, 1e-7)
    return int(min(hi, max(lo, budget / per_round)))


def row(label: str, rows: int, t_forest: np.ndarray, t_lgb: np.ndarray) -> str:
    fm, fp = summary(t_forest)
    lm, lp = summary(t_lgb)
    return (f"{label:>9} {rows:>6} {fm:>11.1f} {fp:>11.1f} {lm:>11.1f} {lp:>11.1f} {lm / fm:>7.1f}x "
            f"{fm / rows:>9.3f} {lm / rows:>9.3f} {len(t_forest):>6}")


def main(argv: list[str] | None = None) -> int:
    ap = Parser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=number(float, 0, above=True), default=3.0, help="seconds of timing per table cell")
    ap.add_argument("--train-rows", type=number(int, 100), default=20_000)
    ap.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    ap.add_argument("--compiled", action="store_true",
                    help="also time tl2cgen and lleaves (if installed) on the 200x63 model")
    args = ap.parse_args(argv)
    models = [(100, 31), (200, 63), (500, 127)]
    batches = [1, 100, 500, 2000]
    lo, hi = 30, 5000
    if args.quick:
        models, batches, args.budget, args.train_rows, lo, hi = [(10, 7), (20, 15)], [1, 100], 0.05, \
            2000, 5, 50
    print(machine())
    print("times in microseconds per batch (median / p99), interleaved; ratio = LightGBM / Forest "
          f"medians; both single-threaded; n = samples per median and p99 (at least {lo}: --budget seconds "
          "per cell; with a few dozen, the p99 is near the maximum)\n")
    header = (f"{'model':>9} {'rows':>6} {'forest med':>11} {'forest p99':>11} {'lgb med':>11} "
              f"{'lgb p99':>11} {'ratio':>8} {'fst us/row':>9} {'lgb us/row':>9} {'n':>6}")
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(1)
    kept = {}
    for trees, leaves in models:
        t0 = time.perf_counter()
        booster = train(trees, leaves, args.train_rows)
        forest = Forest.from_booster(booster)
        used = np.mean([t["num_leaves"] for t in booster.dump_model()["tree_info"]])
        label = f"{trees}x{leaves}"
        for n in batches:
            X, _ = synth(rng, n)
            want = booster.predict(X, raw_score=True, num_threads=1)
            if not np.array_equal(forest.predict(X), want):
                print(f"MISMATCH for {label} at {n} rows", file=sys.stderr)
                return 1
            funcs = {"forest": lambda X=X: forest.predict(X),
                     "lgb": lambda X=X: booster.predict(X, raw_score=True, num_threads=1)}
            t = interleaved(funcs, repeats_for(funcs, args.budget, lo, hi), warmup=3)
            print(row(label, n, t["forest"], t["lgb"]), flush=True)
        print(f"{'':>9} (trained in {time.perf_counter() - t0:.1f} s, {used:.1f} leaves per tree on "
              f"average)")
        kept[(trees, leaves)] = (booster, forest)

    key = (200, 63) if (200, 63) in kept else list(kept)[-1]
    booster, forest = kept[key]
    n = 500 if not args.quick else 100
    X, _ = synth(rng, n)
    Xn = X.copy()
    Xn[rng.random(Xn.shape) < 0.01] = np.nan
    print(f"\n{key[0]}x{key[1]} at {n} rows, median / p99 us per batch and n samples, interleaved:")
    funcs = {"forest (1% NaN values)": lambda: forest.predict(Xn),
             "lgb (1% NaN values)": lambda: booster.predict(Xn, raw_score=True, num_threads=1),
             "forest keyed pair layout (shipped)": lambda: forest._predict(X, 0),
             "forest float pair layout (previous)": lambda: forest._predict(X, 1),
             "forest previous (1% NaN values)": lambda: forest._predict(Xn, 1),
             "forest row by row": lambda: forest._predict(X, 2)}
    if not np.array_equal(forest.predict(Xn), booster.predict(Xn, raw_score=True)):
        print("MISMATCH with NaN rows", file=sys.stderr)
        return 1
    trees = parsed_trees(booster.model_to_string())     # parsed once, untimed, as the forest's arrays are
    if not np.array_equal(forest.predict(Xn), forest_reference(trees, Xn)):
        print("MISMATCH with the numpy reference", file=sys.stderr)
        return 1
    funcs["numpy reference (1% NaN values)"] = lambda: forest_reference(trees, Xn)
    t = interleaved(funcs, repeats_for(funcs, args.budget, lo, hi), warmup=3)
    for name, v in t.items():
        med, p99 = summary(v)
        print(f"  {name:<34} {med:>10.1f} {p99:>10.1f} {len(v):>6}")
    ref_med, fst_med = summary(t["numpy reference (1% NaN values)"])[0], summary(t["forest (1% NaN values)"])[0]
    print(f"  forest over its plain numpy reference (recserve._core.forest.forest_reference, the same rows, "
          f"scores equal): {ref_med / fst_med:.1f}x")
    if args.compiled:
        compiled(booster, forest, X, args.budget, lo, hi)
    return 0


def compiled(booster, forest, X, budget: float, lo: int, hi: int) -> None:
    """tl2cgen and lleaves beside Forest and LightGBM, interleaved, on the same rows."""
    import tempfile

    funcs = {"forest": lambda: forest.predict(X),
             "lgb": lambda: booster.predict(X, raw_score=True, num_threads=1)}
    want = booster.predict(X, raw_score=True, num_threads=1)
    tmp = Path(tempfile.mkdtemp(prefix="recserve-compiled-"))
    model = tmp / "model.txt"
    booster.save_model(str(model))
    print(f"\ncompiled alternatives, same model and rows ({len(X)}):")
    try:
        import tl2cgen
        import treelite
        t0 = time.perf_counter()
        tm = treelite.frontend.load_lightgbm_model(str(model))
        tl2cgen.export_lib(tm, toolchain="gcc", libpath=str(tmp / "tl.so"), nthread=1)
        pred = tl2cgen.Predictor(str(tmp / "tl.so"), nthread=1)
        got = pred.predict(tl2cgen.DMatrix(X), pred_margin=True).reshape(-1)
        print(f"  tl2cgen: compiled in {time.perf_counter() - t0:.1f} s, scores equal LightGBM's: "
              f"{np.array_equal(got, want)} (max |diff| {np.abs(got - want).max():.3g})")
        funcs["tl2cgen"] = lambda: pred.predict(tl2cgen.DMatrix(X), pred_margin=True)
    except ImportError:
        print("  tl2cgen: not installed, skipped")
    try:
        import lleaves
        t0 = time.perf_counter()
        ll = lleaves.Model(model_file=str(model))
        ll.compile(cache=str(tmp / "ll.o"))
        X64 = X.astype(np.float64)
        got = ll.predict(X64, n_jobs=1)          # the bench models are regression: raw = output
        print(f"  lleaves: compiled in {time.perf_counter() - t0:.1f} s, scores equal LightGBM's: "
              f"{np.array_equal(got, want)} (max |diff| {np.abs(got - want).max():.3g})")
        funcs["lleaves"] = lambda: ll.predict(X64, n_jobs=1)
    except ImportError:
        print("  lleaves: not installed, skipped")
    t = interleaved(funcs, repeats_for(funcs, budget, lo, hi), warmup=3)
    for name, v in t.items():
        med, p99 = summary(v)
        print(f"  {name:<34} {med:>10.1f} {p99:>10.1f} {len(v):>6}")


if __name__ == "__main__":
    sys.exit(main())
