"""Trending per country (trainer/countries.py) against a plain per-country loop, and what the build writes."""
from __future__ import annotations

import numpy as np
import pytest

from trainer.countries import country_lists, user_codes

DAY = 86400.0
EW = [1.0, 2.0, 3.0, 5.0, 4.0]


def _data(seed: int, n_users=60, n_items=40, n=900):
    rng = np.random.default_rng(seed)
    names = np.array(["", "DE", "FR", "US", "NZ"], object)
    country = names[rng.choice(5, size=n_users, p=[.1, .3, .25, .3, .05])]
    user = rng.integers(0, n_users, n)
    item = rng.integers(0, n_items, n)
    ts = 1_700_000_000 - rng.uniform(0, 90, n) * DAY
    event = rng.integers(0, 5, n).astype(np.int8)
    return user, item, ts, event, country, n_items


def _reference(user, item, ts, event, country, n_items, now, half_life, min_users, prior):
    """One country at a time, every item: the docstring's formula, then the list of those with D_c > 0."""
    w = np.array(EW)[event] * 0.5 ** (np.maximum(0.0, now - ts) / (half_life * DAY))
    d_g = np.zeros(n_items)
    for i, x in zip(item, w):
        d_g[i] += x
    out = {}
    for c in sorted(set(country) - {""}):
        mine = np.array([country[u] == c for u in user])
        if len(set(user[mine].tolist())) < min_users:
            continue
        d_c = np.zeros(n_items)
        for i, x in zip(item[mine], w[mine]):
            d_c[i] += x
        s_c, s_g = d_c.sum(), d_g.sum()
        score = np.log1p(s_c / (s_c + prior) * (d_c + prior * d_g / s_g))
        listed = [i for i in range(n_items) if d_c[i] > 0]
        listed.sort(key=lambda i: (-score[i], -d_g[i], i))
        out[c] = (listed, score[listed], s_c * prior / ((s_c + prior) * s_g))
    return out


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("min_users,prior", [(1, 100.0), (12, 5.0), (15, 1000.0)])
def test_lists_match_a_plain_loop(seed, min_users, prior):
    user, item, ts, event, country, n_items = _data(seed)
    now = float(ts.max()) + DAY
    got = country_lists(user, item, ts, event, country, n_items, now, EW, 30.0, min_users, prior)
    ref = _reference(user, item, ts, event, country, n_items, now, 30.0, min_users, prior)
    assert got.ids == sorted(set(country) - {""})
    assert got.n_lists == len(ref)
    for k, c in enumerate(got.ids):
        a, b = got.indptr[k], got.indptr[k + 1]
        if c not in ref:
            assert a == b and got.weight[k] == 0.0
            continue
        rows, scores, weight = ref[c]
        assert got.rows[a:b].tolist() == rows, c
        np.testing.assert_allclose(got.scores[a:b], scores, rtol=1e-6)
        assert got.weight[k] == pytest.approx(weight, rel=1e-9)
    # every user keeps her country's code, -1 for none
    assert [got.ids[x] if x >= 0 else "" for x in got.user_code.tolist()] == list(country)


def test_no_country_no_lists_and_zero_min_users_turns_them_off():
    user, item, ts, event, country, n_items = _data(0)
    none = country_lists(user, item, ts, event, np.full(len(country), "", object), n_items, 0.0, EW, 30.0, 1, 1.0)
    assert none.ids == [] and none.n_lists == 0
    off = country_lists(user, item, ts, event, country, n_items, float(ts.max()), EW, 30.0, 0, 100.0)
    assert off.ids and off.n_lists == 0 and (off.user_code >= 0).any()


def test_user_codes_are_the_sorted_countries():
    ids, code = user_codes(np.array(["SE", "", "AT", "SE"], object))
    assert ids == ["AT", "SE"] and code.tolist() == [1, -1, 0, 1]


def test_a_build_writes_the_lists_the_server_reads(tmp_path):
    """A bundle built from logs whose countries have favourites of their own holds a trending list per
    country, and the list of a country leads with what its own users took most."""
    from recserve.bundle import Bundle
    from trainer.build import build
    from trainer.synth import synth
    from trainer.timing import Timer

    ds, _ = synth(1500, 300, seed=0, country_effect=2.0)
    build(ds, tmp_path / "b", {"seed": 0, "factors": 8, "holdout": 0.0, "ranker_rounds": 10, "tune": False,
                               "country_min_users": 30}, timer=Timer(verbose=False))
    with Bundle.open(tmp_path / "b") as b:
        t = b.tables
        ids = [t.id_of("country", k) for k in range(t.n_ids("country"))]
        assert ids == sorted(set(map(str, ds.user_country)))
        indptr, rows = t.array("country_indptr"), t.array("country_rows")
        users = np.bincount(np.searchsorted(ids, ds.user_country.astype(str))[np.unique(ds.user)], minlength=len(ids))
        assert [bool(indptr[k + 1] > indptr[k]) for k in range(len(ids))] == (users >= 30).tolist()
        item_row = {str(ds.item_ids[i]): i for i in range(ds.n_items)}
        glob = [item_row[i] for i in t.ids_of("item", t.array("trend_rows")[:10])]
        for k, c in enumerate(ids):
            if indptr[k + 1] == indptr[k]:
                continue
            mine = ds.user_country[ds.user].astype(str) == c
            counts = np.bincount(ds.item[mine], minlength=ds.n_items)
            top = [item_row[i] for i in t.ids_of("item", rows[indptr[k]:indptr[k] + 10])]
            # the country's head holds more of what its own users took than the global head does
            assert counts[top].sum() > 1.2 * counts[glob].sum(), (c, counts[top].sum(), counts[glob].sum())


def test_the_prior_is_tuned_on_the_label_windows_new_users(tmp_path):
    """Logs whose countries have favourites: the build's tuning finds country lists worth more than the
    global one for the users new in its label window, and the served bundle holds them."""
    from recserve.bundle import Bundle
    from trainer.build import build
    from trainer.synth import synth
    from trainer.timing import Timer

    ds, _ = synth(3000, 300, seed=1, country_effect=1.5)
    build(ds, tmp_path / "b", {"seed": 0, "factors": 8, "holdout": 0.0, "ranker_rounds": 10},
          timer=Timer(verbose=False))
    with Bundle.open(tmp_path / "b") as b:
        tuned = b.manifest["training"]["tuning"]["country_prior"]
        assert tuned["users"] >= 50 and tuned["chosen"] is not None, tuned
        grid = {g["prior"]: g["recall@50"] for g in tuned["grid"]}
        assert grid[tuned["chosen"]] == max(grid.values()) > grid[None], grid
        assert b.manifest["training"]["config"]["country_prior"] == tuned["chosen"]
        assert b.tables.has_array("country_rows") and len(b.tables.array("country_rows"))


def test_too_few_new_users_keep_the_default_prior():
    from trainer.countries import tune_prior
    from trainer.synth import synth

    ds, _ = synth(200, 100, seed=0)
    first = np.full(ds.n_users, np.inf)
    np.minimum.at(first, ds.user, ds.ts)
    cut = float(np.quantile(ds.ts, 0.9))
    fit, label = ds.ts < cut, ds.ts >= cut
    prior, info = tune_prior(ds, fit, label, cut, ds.n_items, EW, 30.0, 1, 123.0)
    assert prior == 123.0 and info["chosen"] == 123.0 and "fewer than 50" in info["kept_default"]
    assert info["users"] == int(((first >= cut) & (first < np.inf)).sum()) < 50


def test_synth_countries_have_favourites_only_when_asked():
    from trainer.synth import synth

    def overlap(ds):
        tops = []
        for c in ("US", "DE"):
            mine = ds.user_country[ds.user].astype(str) == c
            tops.append(set(np.argsort(-np.bincount(ds.item[mine], minlength=ds.n_items))[:20].tolist()))
        return len(tops[0] & tops[1]) / 20

    plain, tilted = synth(3000, 400, seed=0)[0], synth(3000, 400, seed=0, country_effect=1.5)[0]
    assert overlap(plain) >= 0.5 and overlap(tilted) <= 0.35, (overlap(plain), overlap(tilted))
    assert (plain.user_country == tilted.user_country).all()
    with pytest.raises(ValueError, match="country_effect must be >= 0"):
        synth(10, 10, country_effect=-1.0)


def test_cli_countries_and_min_users_flags(tmp_path, capsys):
    from recserve.bundle import Bundle
    from trainer.cli import main

    assert main(["synth", str(tmp_path / "d"), "--users", "300", "--items", "60", "--countries", "1"]) == 0
    assert main(["build", "--data", str(tmp_path / "d"), str(tmp_path / "b"), "--holdout", "0", "--no-tune",
                 "--country-min-users", "0", "--factors", "8"]) == 0
    with Bundle.open(tmp_path / "b") as b:        # codes kept for the users, no list for any country
        assert b.tables.n_ids("country") == 10 and len(b.tables.array("country_rows")) == 0
    for flag in ("--countries", "--country-min-users"):
        with pytest.raises(SystemExit) as e:
            main(["synth" if flag == "--countries" else "build", str(tmp_path / "e"), flag, "-1"])
        assert e.value.code == 2 and f"{flag}: must be at least 0, not -1" in capsys.readouterr().err


def test_a_tuned_build_without_countries_serves_the_global_list(tmp_path):
    """Logs with no country at all (MovieLens, or no users file): the tuning has nothing to tune and keeps
    its default; the bundle has no list, and every cold request takes the global one."""
    from recserve.bundle import Bundle
    from recserve.pipeline.recommender import Recommender
    from trainer.build import build
    from trainer.synth import synth
    from trainer.timing import Timer

    ds, _ = synth(1500, 300, seed=0)
    ds.user_country = np.full(ds.n_users, "", object)
    build(ds, tmp_path / "b", {"seed": 0, "factors": 8, "holdout": 0.0, "ranker_rounds": 10},
          timer=Timer(verbose=False))
    with Bundle.open(tmp_path / "b") as b:
        tuned = b.manifest["training"]["tuning"]["country_prior"]
        assert tuned["users"] == 0 and "fewer than 50" in tuned["kept_default"], tuned
        assert not b.tables.has_array("country_rows")
        assert Recommender(b, None).countries is None


def test_a_country_is_checked_as_an_id(tmp_path):
    """The server takes a country as an id (context.country): the users file's are held to the same rules,
    refused when read rather than at the end of a build."""
    from trainer.datawrite import write_dataset
    from trainer.io import DataError, load_dataset
    from trainer.synth import synth

    ds, _ = synth(50, 30, seed=0)
    for bad, why in (("Z" * 300, "longer than 256 bytes"), ("S\x01E", "with control characters"),
                     ("  ", "of white space only")):
        d = synth(50, 30, seed=0)[0]
        d.user_country = d.user_country.copy()
        d.user_country[3] = bad
        write_dataset(d, tmp_path / why[:4])
        with pytest.raises(DataError, match=f"users.csv: column country has 1 name.s. {why}"):
            load_dataset(tmp_path / why[:4])
    write_dataset(ds, tmp_path / "ok")
    back = load_dataset(tmp_path / "ok")
    assert dict(zip(map(str, back.user_ids), back.user_country)) == dict(zip(map(str, ds.user_ids), ds.user_country))
