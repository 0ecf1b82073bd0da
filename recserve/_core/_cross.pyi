import numpy as np
from numpy.typing import NDArray

SPEC_LEN: int

def cross(user: NDArray[np.float32], uvec: NDArray[np.float32], items: NDArray[np.float32],
          emb: NDArray[np.float32], rows: NDArray[np.int32], ctx: NDArray[np.float32],
          rank: NDArray[np.int32], score: NDArray[np.float32], spec: NDArray[np.int64],
          runs: NDArray[np.int64], now_days: float) -> NDArray[np.float32]: ...
