import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from recserve._core.mmr import dense_codes, mmr, mmr_reference


def setup(seed, n, d=8, n_items=300, dup=False):
    """``dup``: candidates drawn from about n / 3 items, so that many share a row (similarity 1)."""
    rng = np.random.default_rng(seed)
    E = rng.normal(size=(n_items, d)).astype(np.float32)
    if dup:
        rows = rng.choice(rng.choice(n_items, max(n // 3, 1), replace=False), n).astype(np.int32)
    else:
        rows = rng.choice(n_items, n, replace=False).astype(np.int32)
    # well separated relevance so float32/float64 rounding cannot flip a choice (but with lam = 0 only
    # similarity counts: with ``dup``, candidates sharing the rows of different picks are all at similarity
    # 1 up to a float32 rounding of their own, a tie that rounding decides; exact_setup covers that case)
    rel = (rng.permutation(n) / max(n, 1)).astype(np.float32)
    return rng, E, rows, rel


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(0, 60), k=st.integers(0, 80),
       lam=st.sampled_from([0.0, 0.3, 0.5, 0.8, 1.0]), n_creators=st.integers(0, 6),
       max_per=st.integers(0, 4), adj=st.booleans(), dup=st.booleans())
def test_matches_reference(seed, n, k, lam, n_creators, max_per, adj, dup):
    """Every pick, with or without creator rules, and candidates that share a row (``dup``)."""
    assume(not (dup and lam == 0.0))      # ties decided by rounding (see setup)
    rng, E, rows, rel = setup(seed, n, dup=dup)
    creators = rng.integers(-1, n_creators, n) if n_creators else None
    got, pen = mmr(rel, E, rows, k, lam, creators, max_per, adj)
    want, wpen = mmr_reference(rel, E, rows, k, lam, creators, max_per, adj)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(pen, wpen, atol=1e-5)
    assert np.isfinite(pen).all() and (lam < 1.0 or (pen == 0).all())
    assert len(set(got.tolist())) == len(got) <= min(k, n)
    if creators is not None and max_per > 0:
        c = creators[got]
        for v in set(c[c >= 0].tolist()):
            assert (c == v).sum() <= max_per


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(0, 80), k=st.integers(0, 40),
       lam=st.sampled_from([0.0, 0.5, 0.8, 1.0]), n_creators=st.integers(1, 30), max_per=st.integers(0, 3),
       adj=st.booleans(), dup=st.booleans())
def test_any_creator_ids_pick_as_their_dense_codes(seed, n, k, lam, n_creators, max_per, adj, dup):
    """The kernel re-codes creator ids itself (a hash table): large, sparse and negative ids pick exactly
    as their dense codes 0..m-1 (negative = unknown) do, and as the reference does."""
    assume(not (dup and lam == 0.0))      # ties decided by rounding (see setup)
    rng, E, rows, rel = setup(seed, n, dup=dup)
    ids = np.concatenate([rng.integers(0, 2**62, n_creators), rng.integers(-2**40, 0, 2)])
    ids[: n_creators // 3] = np.arange(n_creators // 3) << 20     # ids that share their low bits
    creators = rng.choice(ids, n)
    got, pen = mmr(rel, E, rows, k, lam, creators, max_per, adj)
    coded, cpen = mmr(rel, E, rows, k, lam, dense_codes(creators), max_per, adj)
    np.testing.assert_array_equal(got, coded)
    np.testing.assert_array_equal(pen, cpen)
    want, _ = mmr_reference(rel, E, rows, k, lam, creators, max_per, adj)
    np.testing.assert_array_equal(got, want)
    if max_per > 0:
        c = creators[got]
        for v in set(c[c >= 0].tolist()):
            assert (c == v).sum() <= max_per


def exact_setup(seed, n, d=16, n_items=120, dup=False):
    """Embeddings whose similarities are exact in float32 and float64 (four entries of 0.5 each: unit
    vectors, cosines in quarters) and relevance in 1/64ths: every objective is computed exactly by the
    kernel and the reference alike, so ties are real ties and both must break them the same way."""
    rng, E, rows, _ = setup(seed, n, d, n_items, dup)
    E[:] = 0
    for i in range(n_items):
        E[i, rng.choice(d, 4, replace=False)] = 0.5
    return rng, E, rows, (rng.integers(0, 16, n) / 64.0).astype(np.float32)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(0, 80), k=st.integers(0, 40),
       lam=st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), n_creators=st.integers(0, 8),
       max_per=st.integers(0, 4), adj=st.booleans(), dup=st.booleans())
def test_every_pick_matches_reference_with_ties(seed, n, k, lam, n_creators, max_per, adj, dup):
    """The kernel's lazy greedy (a heap of stale objectives, brought up to date only at its top) picks
    exactly what a scan of every candidate at every step picks, ties and creator rules included."""
    rng, E, rows, rel = exact_setup(seed, n, dup=dup)
    creators = rng.integers(-1, n_creators, n) if n_creators else None
    got, pen = mmr(rel, E, rows, k, lam, creators, max_per, adj)
    want, wpen = mmr_reference(rel, E, rows, k, lam, creators, max_per, adj)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(pen, wpen)


def test_lambda_one_is_relevance_order():
    _, E, rows, rel = setup(1, 40)
    got, _ = mmr(rel, E, rows, 40, 1.0)
    np.testing.assert_array_equal(got, np.argsort(-rel, kind="stable"))


def test_no_adjacent_same_creator_when_avoidable():
    _, E, rows, rel = setup(2, 30)
    creators = np.array([0] * 15 + [1] * 15)
    got, _ = mmr(rel, E, rows, 30, 0.7, creators, 0, True)
    c = creators[got]
    assert all(c[i] != c[i + 1] for i in range(29))


def test_diversity_lowers_similarity():
    rng, E, rows, rel = setup(3, 100, d=4)
    plain, _ = mmr(rel, E, rows, 10, 1.0)
    diverse, _ = mmr(rel, E, rows, 10, 0.3)

    def mean_sim(idx):
        V = E[rows[idx]]
        V = V / np.linalg.norm(V, axis=1, keepdims=True)
        S = V @ V.T
        return (S.sum() - 10) / 90

    assert mean_sim(diverse) < mean_sim(plain)


def test_bad_input_rejected():
    _, E, rows, rel = setup(4, 10)
    with pytest.raises(ValueError, match="lambda"):
        mmr(rel, E, rows, 5, 1.5)
    bad = rel.copy()
    bad[2] = np.inf
    with pytest.raises(ValueError, match="not finite"):
        mmr(bad, E, rows, 5, 0.5)
    bad_rows = rows.copy()
    bad_rows[0] = len(E)
    with pytest.raises(ValueError, match="out of range"):
        mmr(rel, E, bad_rows, 5, 0.5)
    with pytest.raises(ValueError, match="creators"):
        mmr(rel, E, rows, 5, 0.5, np.zeros(3))


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 50), w=st.sampled_from([0.0, 0.1, 0.5, 2.0]),
       lam=st.sampled_from([0.5, 1.0]))
def test_novelty_boost_matches_reference(seed, n, w, lam):
    rng, E, rows, rel = setup(seed, n)
    nov = (rng.random(n) < 0.3).astype(np.float32)
    got, _ = mmr(rel, E, rows, 10, lam, novelty=nov, novelty_weight=w)
    want, _ = mmr_reference(rel, E, rows, 10, lam, novelty=nov, novelty_weight=w)
    np.testing.assert_array_equal(got, want)


def test_novelty_boost_lifts_new_items():
    _, E, rows, rel = setup(5, 40)
    nov = np.zeros(40, np.float32)
    nov[np.argsort(rel)[:3]] = 1          # the three least relevant items are new
    plain, _ = mmr(rel, E, rows, 3, 1.0)
    boosted, _ = mmr(rel, E, rows, 3, 1.0, novelty=nov, novelty_weight=2.0)
    assert set(boosted.tolist()) == set(np.flatnonzero(nov).tolist()) != set(plain.tolist())
    with pytest.raises(ValueError, match="novelty"):
        mmr(rel, E, rows, 3, 1.0, novelty=nov[:5], novelty_weight=1.0)
    with pytest.raises(ValueError, match="finite"):
        mmr(rel, E, rows, 3, 1.0, novelty=nov, novelty_weight=float("nan"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-3, 40), max_size=60))
def test_dense_codes_are_the_rank_of_each_known_creator(creators):
    """Per request, creators are re-coded to 0..m-1 in id order, unknown (negative) stays -1: what
    ``np.unique(..., return_inverse=True)`` gives."""
    c = np.array(creators, np.int64)
    expected = np.full(len(c), -1, np.int32)
    known = c >= 0
    if known.any():
        expected[known] = np.unique(c[known], return_inverse=True)[1]
    np.testing.assert_array_equal(dense_codes(c), expected)


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.9])
def test_zero_dimensions_pick_by_relevance(lam):
    """No dimensions: every similarity is 0, so relevance decides (it picked in index order, penalties -inf)."""
    rel = np.array([0.2, 0.9, 0.5, 0.7], np.float32)
    E = np.zeros((4, 0), np.float32)
    rows = np.arange(4, dtype=np.int32)
    got, want = mmr(rel, E, rows, 4, lam), mmr_reference(rel, E, rows, 4, lam)
    assert got[0].tolist() == want[0].tolist() == ([0, 1, 2, 3] if lam == 0 else [1, 3, 2, 0])   # 0: all tie
    assert np.array_equal(got[1], want[1]) and (got[1] == 0).all()


@pytest.mark.parametrize("scale", [1e20, 1e30, 1e-24, 1e-30])
def test_very_large_or_small_embeddings_are_not_zero_vectors(scale):
    """Norms are summed in double: a float32 sum of squares overflowed (or underflowed) and the rows counted
    as zero vectors, with no similarity at all."""
    E = (np.array([[1, 0], [1, 0.01], [0, 1]], np.float64) * scale).astype(np.float32)
    rel = np.array([1.0, 0.9, 0.8], np.float32)
    rows = np.arange(3, dtype=np.int32)
    got, want = mmr(rel, E, rows, 3, 0.5), mmr_reference(rel, E, rows, 3, 0.5)
    assert got[0].tolist() == want[0].tolist() == [0, 2, 1]
    assert np.allclose(got[1], want[1], atol=1e-5) and got[1][2] > 0.99


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 30), high=st.booleans(), max_per=st.integers(1, 3))
def test_unsigned_creator_ids_are_refused_not_wrapped_beyond_int64(seed, n, high, max_per):
    """uint64 ids up to 2**63 - 1 pick as the same int64 ids; one at 2**63 or above was wrapped to a negative
    id, an unknown creator to whom ``max_per_creator`` does not apply, and is refused."""
    rng, E, rows, rel = setup(seed, n)
    ids = rng.integers(0, 2**63 - 4, 4, dtype=np.uint64) + np.uint64(3)
    ids[0] = np.uint64(2**63 - 1)
    creators = rng.choice(ids, n)
    if high:
        creators[rng.integers(0, n)] = np.uint64(2**63) + rng.integers(0, 2**63, dtype=np.uint64)
        with pytest.raises(ValueError, match="creators: .* does not fit int64"):
            mmr(rel, E, rows, n, 0.5, creators, max_per)
    else:
        got = mmr(rel, E, rows, n, 0.5, creators, max_per)
        want = mmr(rel, E, rows, n, 0.5, creators.astype(np.int64), max_per)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_fractional_counts_and_creators_are_refused_not_truncated():
    _, E, rows, rel = setup(5, 6)
    with pytest.raises(TypeError, match="k must be an integer"):
        mmr(rel, E, rows, 2.9, 0.5)
    with pytest.raises(ValueError, match="creators must hold integers"):
        mmr(rel, E, rows, 3, 0.5, creators=[1.5, 1.2, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="max_per_creator must be >= 0"):
        mmr(rel, E, rows, 3, 0.5, creators=np.arange(6), max_per_creator=-1)


def _unit_max_sim(E, rows, picked_rows):
    e = E[np.asarray(rows, np.int64)].astype(np.float64)
    p = E[np.asarray(picked_rows, np.int64)].astype(np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    return (e @ p.T).max(axis=1).astype(np.float32)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 60), k=st.integers(1, 40), j=st.integers(1, 40),
       lam=st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), n_creators=st.integers(0, 6), adj=st.booleans(),
       dup=st.booleans())
def test_a_call_given_the_earlier_picks_continues_their_greedy(seed, n, k, j, lam, n_creators, adj, dup):
    """``prior_sim`` and ``after_creator``: k picks made as j, then the rest from the candidates left, are
    the k picks of one call (no cap: the cap counts are not carried), penalties included; and the kernel
    matches the reference given the same prior."""
    rng, E, rows, rel = exact_setup(seed, n, dup=dup)
    creators = rng.integers(-1, n_creators, n) if n_creators else None
    whole, wpen = mmr(rel, E, rows, k, lam, creators, 0, adj)
    j = min(j, len(whole))
    first, fpen = mmr(rel, E, rows, j, lam, creators, 0, adj)
    rest = np.setdiff1d(np.arange(n), first)
    prior = _unit_max_sim(E, rows[rest], rows[first]) if len(rest) else np.zeros(0, np.float32)
    after = None if creators is None else int(creators[first[-1]])
    cr = None if creators is None else creators[rest]
    got, pen = mmr(rel[rest], E, rows[rest], k - j, lam, cr, 0, adj, prior_sim=prior, after_creator=after)
    want, rpen = mmr_reference(rel[rest], E, rows[rest], k - j, lam, cr, 0, adj, prior_sim=prior,
                               after_creator=after)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(pen, rpen)
    np.testing.assert_array_equal(np.concatenate([first, rest[got]]), whole)
    np.testing.assert_array_equal(np.concatenate([fpen, pen]), wpen)


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_a_prior_with_no_dimensions_matches_the_reference(lam):
    """Embeddings of no dimension: every similarity is 0, so after the first pick a negative prior is 0."""
    rel = np.array([0.9, 0.8, 0.7, 0.1], np.float32)
    prior = np.array([0, -1, 0, -1], np.float32)
    E, rows = np.zeros((4, 0), np.float32), np.arange(4, dtype=np.int32)
    got, pen = mmr(rel, E, rows, 4, lam, prior_sim=prior)
    want, wpen = mmr_reference(rel, E, rows, 4, lam, prior_sim=prior)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(pen, wpen)


def test_prior_similarities_are_checked():
    _, E, rows, rel = setup(6, 10)
    with pytest.raises(ValueError, match="prior similarities"):
        mmr(rel, E, rows, 5, 0.5, prior_sim=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"prior_sim\[2\] is not finite"):
        mmr(rel, E, rows, 5, 0.5, prior_sim=np.array([0, 0, np.nan] + [0] * 7, np.float32))
