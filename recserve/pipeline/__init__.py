"""The request pipeline, one module per stage, with no gRPC in it.

``candidates`` (user vector, ANN / i2i / session / popular lists, filters) -> ``ranking`` (crossing and
ranker scores, contributions) -> ``rerank`` (min-max relevance, MMR with creators) assembled by
``recommender.Recommender``, over the request and result types of ``messages``. Errors are
:class:`InvalidArgument` / :class:`NotFound`, each naming the field; ``recserve.service`` maps them to status
codes in one place.
"""
from recserve.pipeline.errors import InvalidArgument, NotFound, PipelineError

__all__ = ["InvalidArgument", "NotFound", "PipelineError"]
