"""recserve: a gRPC recommendation server with a Cython core, and the trainer that builds its bundles."""
__version__ = "0.1.0"
