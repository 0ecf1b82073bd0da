"""The standard ``grpc.health.v1`` service with a bound on open Watch streams.

A Watch stream stays open until its client closes it and holds a little memory in the worker while it
does; it is not a call of the Recommender service, so the bound on calls in flight
(``max_concurrent_rpcs``) does not cover it. A client that opens Watch streams in a loop would otherwise
grow the worker without end: beyond ``limit`` open streams per worker a new one is refused with
RESOURCE_EXHAUSTED (``Check`` always answers).
"""
from __future__ import annotations

import grpc
from grpc_health.v1._async import HealthServicer


class BoundedHealthServicer(HealthServicer):
    """grpcio's asyncio health servicer, refusing a Watch beyond ``limit`` open ones."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.watching = 0

    async def Watch(self, request, context) -> None:
        if self.watching >= self.limit:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{self.watching} health Watch streams are open on this worker, the most it "
                                f"keeps (--max-health-watches); close one or poll with Check")
        self.watching += 1
        try:
            await super().Watch(request, context)
        finally:
            self.watching -= 1

    async def List(self, request, context):
        """Every service's status (the standard proto's ``List``, which grpcio's servicer leaves
        unimplemented: UNIMPLEMENTED and a traceback in the log)."""
        from grpc_health.v1 import health_pb2

        return health_pb2.HealthListResponse(statuses={
            name: health_pb2.HealthCheckResponse(status=status) for name, status in self._server_status.items()})
