import numpy as np
from numpy.typing import NDArray

def user_vector(emb: NDArray[np.float32], rows: NDArray[np.int32], ev_w: NDArray[np.float32] | None,
                ages: NDArray[np.float32] | None, decay_short: float, decay_long: float, alpha: float,
                half_life: float) -> NDArray[np.float32]: ...
def user_vectors_csr(emb: NDArray[np.float32], indptr: NDArray[np.int64], rows: NDArray[np.int32],
                     ev_w: NDArray[np.float32] | None, ages: NDArray[np.float32] | None, decay_short: float,
                     decay_long: float, alpha: float, half_life: float) -> NDArray[np.float32]: ...
