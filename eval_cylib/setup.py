"""Build ``rank_cy`` in place: ``python setup.py build_ext --inplace`` run from this folder."""
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

# The distance buckets of rank_cy must be computed by the same float operations everywhere (no fused
# multiply-add in one place and not in another): exact figures rely on it.
COMPILE_ARGS = [] if sys.platform == "win32" else ["-ffp-contract=off"]

extensions = [
    Extension(
        "rank_cy",
        ["rank_cy.pyx"],
        depends=["rank_bucket.h"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=COMPILE_ARGS,
    )
]

setup(
    name="eval_cylib",
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        },
    ),
)
