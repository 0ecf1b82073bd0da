import numpy as np
from numpy.typing import NDArray

def gather(table: NDArray[np.float32], rows: NDArray[np.int32]) -> NDArray[np.float32]: ...
