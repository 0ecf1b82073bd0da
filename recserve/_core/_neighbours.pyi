import numpy as np
from numpy.typing import NDArray

def neighbour_sum(seeds: NDArray[np.int64], weights: NDArray[np.float32], nb_rows: NDArray[np.int32],
                  nb_scores: NDArray[np.float32], k: int) -> tuple[NDArray[np.int32], NDArray[np.float32]]: ...
