"""Server reflection's descriptor pool: protobuf's default one, where a method's full name finds its file."""
from __future__ import annotations


class MethodSymbolPool:
    """The default descriptor pool for server reflection, where a method's full name
    (``recserve.v1.Recommender.Recommend``, what ``grpcurl describe`` asks for) finds its service's file:
    protobuf's upb pool finds services and messages by symbol, not methods (reflection said "not found")."""

    def __init__(self) -> None:
        from google.protobuf import descriptor_pool

        self._pool = descriptor_pool.Default()

    def __getattr__(self, name):
        return getattr(self._pool, name)

    def FindFileContainingSymbol(self, symbol: str):  # noqa: N802 -- the pool's own name
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service, _, method = symbol.rpartition(".")
            try:
                found = self._pool.FindServiceByName(service)
            except KeyError:
                found = None
            if found is None or method not in found.methods_by_name:
                raise
            return found.file


V1_SERVICE = "grpc.reflection.v1.ServerReflection"


def enable(server, names) -> None:
    """Server reflection of ``names`` under both names clients ask for: ``grpc.reflection.v1alpha``
    (grpcio-reflection's) and ``grpc.reflection.v1``, the same messages on the wire, which grpcio-reflection
    does not register (a client that asks v1 only got UNIMPLEMENTED). Lookups go through
    :class:`MethodSymbolPool`."""
    import grpc
    from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

    servicer = reflection.aio.ReflectionServicer((*names, reflection.SERVICE_NAME), pool=MethodSymbolPool())
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo, request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1_SERVICE,
                                                                          {"ServerReflectionInfo": v1}),))
