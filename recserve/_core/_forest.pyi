import numpy as np
from numpy.typing import NDArray

class ForestKernel:
    n_features: int
    def __init__(self, thr: NDArray[np.float32], slot: NDArray[np.int32], left: NDArray[np.int32],
                 right: NDArray[np.int32], flags: NDArray[np.uint8], value: NDArray[np.float64],
                 cat_off: NDArray[np.int32], cat_len: NDArray[np.int32], cat_bits: NDArray[np.uint32],
                 tree: NDArray[np.int32], used: NDArray[np.int32], n_features: int,
                 stage: NDArray[np.int32] | None = None) -> None: ...
    @property
    def num_trees(self) -> int: ...
    def predict(self, X: NDArray[np.float32], out: NDArray[np.float64], strategy: int = 0) -> None: ...
