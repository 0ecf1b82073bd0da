"""Generated gRPC stubs for recserve.v1 (regenerate with `make proto`)."""
