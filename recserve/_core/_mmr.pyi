import numpy as np
from numpy.typing import NDArray

def mmr(rel: NDArray[np.float32], emb: NDArray[np.float32], rows: NDArray[np.int32], k: int, lam: float,
        creators: NDArray[np.int64] | None, max_per_creator: int, no_adjacent: bool,
        prior_sim: NDArray[np.float32] | None = None, after_creator: int = -1
        ) -> tuple[NDArray[np.int32], NDArray[np.float32]]: ...
