import numpy as np
from numpy.typing import NDArray

def merge(rows: NDArray[np.int32], scores: NDArray[np.float32], offsets: NDArray[np.int64],
          quotas: NDArray[np.int64], cap: int, n_items: int, excluded: NDArray[np.uint8] | None
          ) -> tuple[NDArray[np.int32], NDArray[np.uint32], NDArray[np.int32], NDArray[np.float32]]: ...
