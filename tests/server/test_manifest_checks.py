"""A hand-edited manifest whose structure no reader can use is refused with the key it names: by
``verify`` (a ``BundleError``, exit 3 of ``recserve-train verify``) and by the server's reload, which keeps
the live bundle; never a bare ``KeyError`` or ``AttributeError`` later."""
from __future__ import annotations

import re

import pytest

from srvutil import edited_version, set_current

EDITS = {
    "files_string": (lambda m: m.update(files="tables.lmdb index.hnsw ranker.txt"),
                     "files: a map of file name -> sha256"),
    "no_feature_names": (lambda m: m["feature_schema"].pop("feature_names"), "feature_schema.feature_names"),
    "no_training": (lambda m: m.pop("training"), "missing key(s) training"),
    "training_without_cut": (lambda m: m["training"].pop("cut"), "training.cut"),
    "params_list": (lambda m: m.update(params=[1, 2]), "params: a JSON object"),
    "version_number": (lambda m: m.update(version=7), "version: a non-empty string"),
    "index_string": (lambda m: m.update(index="hnsw"), "index: a JSON object"),
    "index_ef_huge": (lambda m: m["index"].update(ef=10**12), "index.ef: an integer in [1, 1048576]"),
}


@pytest.mark.parametrize("what", sorted(EDITS))
def test_a_hand_edited_manifest_with_a_broken_structure_is_refused(shared_root, tmp_path, capsys, what):
    from recserve.bundle import BundleError, verify
    from trainer.cli import main

    edit, says = EDITS[what]
    root, holder, good = edited_version(shared_root, tmp_path / "root", edit)
    with pytest.raises(BundleError, match=re.escape(says)):
        verify(root / "v-edited")
    capsys.readouterr()
    assert main(["verify", str(root / "v-edited")]) == 3
    out = capsys.readouterr()
    assert not out.out and out.err.startswith("recserve-train: error: ") and says in out.err, out
    set_current(root, "v-edited")
    assert not holder.try_reload()
    assert holder.current.version == good and says in holder.last_error, holder.last_error
    holder.current.bundle.close()


def test_the_manifest_bounds_are_within_the_servers_own():
    """A bundle's serving parameters are bounded as the server's settings of the same names (or tighter)."""
    from recserve._core import candidates as CC
    from recserve.config import COLD_ORDERS, RANGES, RANKER_ENGINES
    from recserve.pipeline.ranking import Ranker

    assert CC.RANKER_ENGINES == RANKER_ENGINES == Ranker.ENGINES and CC.COLD_ORDERS == COLD_ORDERS
    shared = sorted(set(CC.PARAM_RANGES) & set(RANGES))
    assert {"cap", "candidates", "ef", "similar_ef", "max_per_creator", "mmr_lambda", "novelty_boost",
            "new_item_days"} <= set(shared)
    for key in shared:
        (lo, hi), (slo, shi) = CC.PARAM_RANGES[key], RANGES[key]
        assert lo >= slo and (shi is None or hi <= shi), key
    CC.check_params(CC.DEFAULT_PARAMS)
