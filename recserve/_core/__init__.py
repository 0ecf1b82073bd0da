"""recserve's Cython core: the hot paths of a request, each behind a thin validating Python layer.

- ``embed``: the user vector (recency-weighted average of recent item embeddings, short/long mix)
- ``merge``: candidate lists from several sources -> one de-duplicated, excluded, capped list
- ``cross``: the ranker's feature matrix (shared by trainer and server)
- ``mmr``: MMR diversity re-ranking with creator rules
- ``tables``: LMDB feature tables with zero-copy views, and ``gather`` of rows
"""
