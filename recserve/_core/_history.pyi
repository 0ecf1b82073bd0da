import numpy as np
from numpy.typing import NDArray

def history_seeds(hist: NDArray[np.int32], ts: NDArray[np.float64], n_recent: int, n_session: int,
                  gap: float) -> tuple[NDArray[np.int32], NDArray[np.int32], NDArray[np.int32]]: ...
def drop_seen(rows: NDArray[np.int32], scores: NDArray[np.float32],
              seen: NDArray[np.int32]) -> tuple[NDArray[np.int32], NDArray[np.float32]]: ...
