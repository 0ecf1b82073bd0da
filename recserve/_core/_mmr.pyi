import numpy as np
from numpy.typing import NDArray

def mmr(rel: NDArray[np.float32], emb: NDArray[np.float32], rows: NDArray[np.int32], k: int, lam: float,
        creators: NDArray[np.int64] | None, max_per_creator: int, no_adjacent: bool
        ) -> tuple[NDArray[np.int32], NDArray[np.float32]]: ...
