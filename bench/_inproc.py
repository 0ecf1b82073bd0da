"""The pipeline in this process: the Recommend requests of ``bench/load.py`` and a ``Recommender`` to run them."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

# bench/load.py's default workload with Recommends only (bench/overhead.py, bench/gaps.py; bench/compare.py
# with its own --mix)
RECOMMEND_ONLY = {"mix": {"Recommend": 1.0}, "k": 20, "zipf": 1.1, "unknown": 0.05, "anon": 0.05,
                  "filter_share": 0.1, "explain_share": 0.0, "events_batch": 3}


def rec_requests(requests: list[tuple[str, bytes]]) -> list:
    """``bench/load.py``'s pre-built (method, body) pairs of Recommends as the pipeline's ``RecRequest``s."""
    from recserve.service import _rec_request
    from recserve.v1 import recommender_pb2 as pb

    return [_rec_request(pb.RecommendRequest.FromString(body), None) for _, body in requests]


@contextlib.contextmanager
def recommender(bundle: str, events: str, overrides: dict | None = None) -> Iterator:
    """The server's ``Recommender`` over ``bundle`` with an empty event store at ``events``, its settings
    from the environment as the server reads them (``overrides`` over them), one numeric thread (as in a
    worker)."""
    from threadpoolctl import threadpool_limits

    from recserve.bundle import Bundle
    from recserve.config import load
    from recserve.events import EventStore
    from recserve.pipeline.recommender import Recommender

    with Bundle.open(bundle) as b, threadpool_limits(1):
        yield Recommender(b, EventStore(events), {**load({}, env=os.environ).pipeline_overrides(), **(overrides or {})})
