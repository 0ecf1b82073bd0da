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
