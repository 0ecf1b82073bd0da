"""Synthetic interaction data with a known latent structure, written in the trainer's input format.

Model: ``n_cat`` category centroids in a ``d``-dim latent space; items sit near their category centroid
(creators are nested in categories and add their own offset); users are mixtures of one or two category
tastes plus noise and drift slowly over time. Item popularity is a power law (Zipf); a few percent of the
items are never shown (cold start) and are among the newest. Interactions come in sessions: each session
has an intent (the user's taste at that time plus noise); each impression picks the best of ``K`` items
drawn by popularity under a Gumbel-perturbed affinity. Each view may turn into click -> cart -> purchase
(probabilities rise with affinity and fall with price) and some purchases get a 1-5 rating.
With ``device_effect`` above 0 each session also has a device (desktop, mobile, tablet, TV), and the
session's intent leans towards a direction of that device's own, by that weight: the interactions then
carry a ``device`` column whose context the ranker can learn (0, the default, draws nothing more: a seed
gives the data it gave before devices were added).
Everything is vectorised in chunks: 1M interactions take a few seconds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.io import Dataset

EPOCH_END = 1767225600.0  # 2026-01-01T00:00:00Z: fixed so data depend on the seed only
DAY = 86400.0


@dataclass
class SynthTruth:
    item_vec: np.ndarray
    user_vec: np.ndarray


def synth(n_users: int, n_items: int, seed: int = 0, interactions: int | None = None, days: int = 180,
          dim: int = 16, cold_frac: float = 0.03, device_effect: float = 0.0,
          country_effect: float = 0.0) -> tuple[Dataset, SynthTruth]:
    if n_users < 1 or n_items < 2:
        raise ValueError("need at least 1 user and 2 items")
    if not device_effect >= 0.0:
        raise ValueError(f"device_effect must be >= 0, got {device_effect}")
    if not country_effect >= 0.0:
        raise ValueError(f"country_effect must be >= 0, got {country_effect}")
    rng = np.random.default_rng(seed)
    target = int(interactions if interactions is not None else 20 * n_users)
    n_cat = int(np.clip(n_items // 40, 3, 24))
    n_creators = max(n_cat, n_items // 12)
    t_end, t_start = EPOCH_END, EPOCH_END - days * DAY

    centroids = rng.normal(size=(n_cat, dim)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    creator_cat = np.arange(n_creators) % n_cat
    creator_off = 0.35 * rng.normal(size=(n_creators, dim)).astype(np.float32) / np.sqrt(dim)
    cat_weight = rng.dirichlet(np.full(n_cat, 2.0))
    item_cat = rng.choice(n_cat, size=n_items, p=cat_weight)
    # a creator of the item's category (every category has at least one creator since n_creators >= n_cat)
    per_cat = [np.flatnonzero(creator_cat == c) for c in range(n_cat)]
    item_creator = np.array([per_cat[c][rng.integers(len(per_cat[c]))] for c in item_cat], np.int64)
    item_vec = (centroids[item_cat] + creator_off[item_creator]
                + 0.45 * rng.normal(size=(n_items, dim)).astype(np.float32) / np.sqrt(dim))
    item_vec /= np.linalg.norm(item_vec, axis=1, keepdims=True)

    cat_price = np.exp(rng.normal(3.0, 0.8, size=n_cat))
    price = np.round(cat_price[item_cat] * np.exp(rng.normal(0, 0.4, size=n_items)), 2).astype(np.float64)
    price = np.maximum(price, 0.99)
    created = t_start - rng.uniform(0, 2 * 365, size=n_items) * DAY
    # about a fifth of the catalogue is released during the window
    new = rng.random(n_items) < 0.2
    created[new] = rng.uniform(t_start, t_end - DAY, size=new.sum())
    in_stock = (rng.random(n_items) > 0.07).astype(np.int8)

    pop = (np.arange(1, n_items + 1, dtype=np.float64) ** -0.9)[rng.permutation(n_items)]
    n_cold = max(1, int(round(cold_frac * n_items)))
    cold = np.argsort(-created)[:n_cold]          # the newest items: nobody has seen them yet
    pop[cold] = 0.0
    pop /= pop.sum()

    main = rng.choice(n_cat, size=n_users, p=cat_weight)
    second = rng.choice(n_cat, size=n_users, p=cat_weight)
    mix = rng.uniform(0.5, 1.0, size=(n_users, 1)).astype(np.float32)
    user_vec = mix * centroids[main] + (1 - mix) * centroids[second] \
        + 0.3 * rng.normal(size=(n_users, dim)).astype(np.float32) / np.sqrt(dim)
    user_vec /= np.linalg.norm(user_vec, axis=1, keepdims=True)
    drift = rng.normal(size=(n_users, dim)).astype(np.float32)
    drift *= 0.5 / np.linalg.norm(drift, axis=1, keepdims=True)
    signup = t_start - rng.uniform(0, 3 * 365, size=n_users) * DAY
    late = rng.random(n_users) < 0.15
    signup[late] = rng.uniform(t_start, t_end - 7 * DAY, size=late.sum())
    countries = np.array(["US", "DE", "FR", "GB", "PL", "ES", "IT", "NL", "SE", "BR"])
    user_cc = rng.choice(len(countries), size=n_users, p=[.3, .15, .1, .1, .08, .08, .07, .05, .04, .03])
    country = countries[user_cc]

    # impressions (views): heavy-tailed activity, sessions of geometric length
    n_views = max(n_users, int(target / 1.48))
    activity = rng.pareto(1.6, size=n_users) + 1.0
    activity /= activity.sum()
    v_user = np.sort(rng.choice(n_users, size=n_views, p=activity))
    # session ids: split each user's views into sessions of mean length 6
    new_sess = np.ones(n_views, bool)
    new_sess[1:] = (v_user[1:] != v_user[:-1]) | (rng.random(n_views - 1) < 1 / 6)
    sess = np.cumsum(new_sess) - 1
    n_sess = int(sess[-1]) + 1
    s_user = v_user[new_sess]
    lo = np.maximum(signup[s_user], t_start)
    s_start = lo + rng.random(n_sess) * (t_end - lo - 3600)
    pos = np.arange(n_views) - np.flatnonzero(new_sess)[sess]
    v_ts = s_start[sess] + pos * rng.exponential(90.0, size=n_views).cumsum() % 1800 + pos * 30.0
    frac = ((s_start - t_start) / (t_end - t_start)).astype(np.float32)[:, None]
    intent = user_vec[s_user] + frac * drift[s_user] \
        + 0.35 * rng.normal(size=(n_sess, dim)).astype(np.float32) / np.sqrt(dim)
    s_device = None
    if device_effect > 0:       # from a generator of its own: the seed's other draws stay as they are
        drng = np.random.default_rng([seed, 1])
        s_device = drng.choice(np.arange(1, 5), size=n_sess, p=[0.35, 0.45, 0.12, 0.08]).astype(np.int8)
        lean = drng.normal(size=(5, dim)).astype(np.float32)
        lean /= np.linalg.norm(lean, axis=1, keepdims=True)
        intent += np.float32(device_effect) * lean[s_device]
    intent /= np.linalg.norm(intent, axis=1, keepdims=True)

    K = 24
    v_item = np.empty(n_views, np.int64)
    v_aff = np.empty(n_views, np.float32)
    cdf = np.cumsum(pop)
    cdfs = None
    if country_effect > 0:      # local favourites: each country tilts the popularity by exp(W * N(0, 1)) per item
        crng = np.random.default_rng([seed, 2])
        local = pop[None, :] * np.exp(country_effect * crng.normal(size=(len(countries), n_items)))
        cdfs = np.cumsum(local / local.sum(axis=1, keepdims=True), axis=1)
        sess_cc = user_cc[s_user]
    for a in range(0, n_views, 50_000):
        b = min(n_views, a + 50_000)
        u01 = rng.random((b - a, K))
        if cdfs is None:
            cand = np.minimum(np.searchsorted(cdf, u01), n_items - 1)
        else:
            cand = np.empty((b - a, K), np.int64)
            cc = sess_cc[sess[a:b]]
            for c in np.unique(cc):
                m = cc == c
                cand[m] = np.minimum(np.searchsorted(cdfs[c], u01[m]), n_items - 1)
        aff = np.einsum("nkd,nd->nk", item_vec[cand], intent[sess[a:b]])
        g = aff * 6.0 + rng.gumbel(size=aff.shape)
        best = g.argmax(1)
        v_item[a:b] = cand[np.arange(b - a), best]
        v_aff[a:b] = aff[np.arange(b - a), best]
    # an item cannot be seen before it exists
    v_ts = np.maximum(v_ts, created[v_item] + 3600 * rng.random(n_views))
    v_ts = np.minimum(v_ts, t_end - 1)

    logit = 2.5 * v_aff - 1.0
    p_click = 1 / (1 + np.exp(-logit))
    clicked = rng.random(n_views) < 0.6 * p_click
    rel_price = price[v_item] / np.median(price)
    carted = clicked & (rng.random(n_views) < 0.35 * p_click / np.sqrt(rel_price))
    bought = carted & (rng.random(n_views) < 0.6) & (in_stock[v_item] == 1)
    rated = bought & (rng.random(n_views) < 0.4)
    stars = np.clip(np.round(3 + 2.5 * v_aff + rng.normal(0, 0.7, n_views)), 1, 5)

    parts = []
    for ev, mask, gap in ((0, np.ones(n_views, bool), 0), (1, clicked, 20), (2, carted, 120),
                          (3, bought, 600), (4, rated, 3 * DAY)):
        idx = np.flatnonzero(mask)
        val = np.full(len(idx), np.nan)
        if ev == 3:
            val = price[v_item[idx]]
        elif ev == 4:
            val = stars[idx]
        parts.append((v_user[idx], v_item[idx], np.minimum(v_ts[idx] + gap * (1 + rng.random(len(idx))), t_end - 1),
                      np.full(len(idx), ev, np.int8), val, sess[idx]))
    u, i, t, e, v, ss = (np.concatenate(x) for x in zip(*parts))
    order = np.lexsort((e, t, u))
    ds = Dataset(
        user=u[order].astype(np.int32), item=i[order].astype(np.int32), ts=np.floor(t[order]),
        event=e[order], value=v[order].astype(np.float32),
        user_ids=np.array([f"u{k}" for k in range(n_users)], dtype=object),
        item_ids=np.array([f"i{k}" for k in range(n_items)], dtype=object),
        item_category=np.array([f"cat{c}" for c in item_cat], dtype=object),
        item_creator=np.array([f"cr{c}" for c in item_creator], dtype=object),
        item_price=price, item_created=np.floor(created), item_in_stock=in_stock,
        user_signup=np.floor(signup), user_country=country.astype(object),
        device=None if s_device is None else s_device[ss[order]],
    )
    return ds, SynthTruth(item_vec, user_vec)
