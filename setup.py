"""Build the Cython core.

Every extension is listed here explicitly, and every one is compiled with the same directives.
Set RECSERVE_DEBUG_CYTHON=1 at build time to turn bounds, wraparound and initialisation checks
back on (they are off by default, as in scikit-learn).
"""
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("RECSERVE_DEBUG_CYTHON", "0") == "1"

COMPILER_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "nonecheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}

# No -march=native / -ffast-math: the wheels must run on any x86-64 / aarch64 and keep IEEE semantics.
EXTRA_COMPILE_ARGS = ["-O3"] if not DEBUG else ["-O0", "-g"]

MODULES = [
    "recserve._core._embed",
    "recserve._core._merge",
    "recserve._core._cross",
    "recserve._core._mmr",
    "recserve._core._gather",
    "recserve._core._forest",
    "recserve._core._neighbours",
    "recserve._core._history",
]

# C headers a module includes (rebuild it when they change)
DEPENDS = {
    "recserve._core._forest": ["recserve/_core/_forest_walk.h"],
}


def extension(name: str) -> Extension:
    return Extension(
        name,
        sources=[name.replace(".", "/") + ".pyx"],
        depends=DEPENDS.get(name, []),
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=EXTRA_COMPILE_ARGS,
    )


setup(
    ext_modules=cythonize(
        [extension(m) for m in MODULES],
        compiler_directives=COMPILER_DIRECTIVES,
    ),
)
