"""recserve-train: builds served bundles from interaction data (see trainer.cli)."""
