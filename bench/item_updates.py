"""What an UpdateItems costs the next request: the item snapshot refreshed from the items that changed
against one rebuilt from every stored item state, in process.

    python bench/item_updates.py --bundle DIR [--repeats 20]

Every item of the bundle first gets a stored state (the worst case for the whole rebuild); then, in
alternating rounds, one item is updated and the snapshot refreshed either way. Prints the medians, the p99s
with the number of samples behind them (one per round: 20 by default, so the p99 is near the maximum) and
the machine.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _cli import Parser, UsageError, check_bundle  # noqa: E402
from _timing import machine  # noqa: E402
from trainer.argtypes import positive_int  # noqa: E402


def main(argv=None) -> int:
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--repeats", type=positive_int, default=20)
    a = ap.parse_args(argv)
    check_bundle(ap, a.bundle)
    from recserve.bundle import Bundle, BundleError
    from recserve.events import EventStore
    from recserve.pipeline.recommender import Recommender

    rng = np.random.default_rng(0)
    try:
        b = Bundle.open(a.bundle)
    except BundleError as exc:
        raise UsageError(f"--bundle: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="recserve-items-") as tmp, b:
        store = EventStore(tmp)
        rec = Recommender(b, store)
        ids = [b.tables.id_of("item", r) for r in range(b.n_items)]
        for s in range(0, len(ids), 1000):
            store.update_items([(i, True, None) for i in ids[s:s + 1000]])
        rec._refresh_items()
        changes = store.item_changes

        def one(whole: bool) -> float:
            store.update_items([(ids[int(rng.integers(len(ids)))], bool(rng.random() < 0.5), None)])
            # whole: the generation alone (no update is after 2**62), then every state read, as a store that
            # no longer lists the updates since the snapshot makes the refresh do
            store.item_changes = (lambda since: (changes(1 << 62)[0], None)) if whole else changes
            t = time.perf_counter()
            rec._refresh_items()
            return (time.perf_counter() - t) * 1e3

        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(a.repeats):
            for whole in (False, True):
                times[whole].append(one(whole))
        store.close()
    print(f"machine: {machine()}")
    print(f"{b.n_items} items, each with a stored state; one item updated, then the snapshot refreshed "
          f"({a.repeats} alternating rounds, median / p99 ms, n = samples behind each p99; with few, the p99 is "
          "near the maximum):")
    for whole, name in ((False, "from the changed items"), (True, "from every item state")):
        t = np.array(times[whole])
        print(f"  {name:24s} {np.median(t):9.2f} {np.percentile(t, 99):9.2f}  n = {len(t)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
