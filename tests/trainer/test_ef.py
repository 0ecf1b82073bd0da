"""The serving ef: recall of the real index against brute force, the smallest ef that reaches the target."""
import hnswlib
import numpy as np
import pytest

from trainer.ef import exact_top, tune_ef


@pytest.fixture(scope="module")
def index_and_data():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(40, 16))
    emb = centers[rng.integers(0, 40, 3000)] + 0.4 * rng.normal(size=(3000, 16))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    idx = hnswlib.Index(space="cosine", dim=16)
    idx.init_index(len(emb), M=8, ef_construction=100, random_seed=0)
    idx.add_items(emb, num_threads=1)
    vecs = emb[rng.integers(0, 3000, (200, 5))].mean(1).astype(np.float32)   # averages, like user vectors
    return idx, emb, vecs


def test_exact_top_is_brute_force(index_and_data):
    _, emb, vecs = index_and_data
    ks = np.full(len(vecs), 10)
    for v, top in zip(vecs[:20], exact_top(emb, vecs[:20], ks[:20])):
        s = emb @ v / np.linalg.norm(v)
        assert set(top.tolist()) == set(np.argsort(-s)[:10].tolist())


def test_tune_ef_picks_the_smallest_ef_reaching_the_target(index_and_data):
    idx, emb, vecs = index_and_data
    idx.set_ef(77)
    ks = np.full(len(vecs), 50)
    chosen, grid = tune_ef(idx, emb, vecs, ks, target=0.95, grid=(10, 50, 100, 400), threads=1)
    assert idx.ef == 77                                     # the index is left as it was
    rec = {r["ef"]: r["recall"] for r in grid}
    assert rec[400] >= 0.99                                 # a wide search is near exact here
    assert chosen["ef"] == min(e for e, r in rec.items() if r >= 0.95)
    # an unreachable target: the best of the grid
    chosen, grid = tune_ef(idx, emb, vecs, ks, target=1.01, grid=(10, 50), threads=1)
    assert chosen["recall"] == max(r["recall"] for r in grid)


def test_zero_vectors_are_skipped_and_none_left_is_an_error(index_and_data):
    idx, emb, vecs = index_and_data
    with pytest.raises(ValueError, match="no user vectors"):
        tune_ef(idx, emb, np.zeros((3, 16), np.float32), np.full(3, 10))


def test_truth_k_counts_the_true_top_found_in_a_longer_answer(index_and_data):
    """SimilarItems asks for similar_k neighbours and re-ranks them: what counts is whether the exact
    nearest truth_k are among them, which a narrower search already achieves."""
    idx, emb, _ = index_and_data
    items = emb[:150]
    ks = np.full(len(items), 40)
    _, strict = tune_ef(idx, emb, items, ks, target=0.95, grid=(10, 40, 400), threads=1)
    _, top10 = tune_ef(idx, emb, items, ks, target=0.95, grid=(10, 40, 400), threads=1, truth_k=10)
    strict, top10 = {r["ef"]: r["recall"] for r in strict}, {r["ef"]: r["recall"] for r in top10}
    idx.set_ef(40)
    labels, _ = idx.knn_query(items, k=40, num_threads=1)
    truth = exact_top(emb, items, np.full(len(items), 10))
    expect = np.mean([len(set(l.tolist()) & set(t.tolist())) / 10 for l, t in zip(labels, truth)])
    assert top10[40] == pytest.approx(expect, abs=1e-4)
    assert top10[40] >= strict[40]
