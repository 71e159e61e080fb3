"""Build step for the one native piece: the few-row bfloat16 kernel (teellm/engine/_bf16.c).

Optional: where it cannot be compiled the package installs without it and the engine
uses torch's own matrix products (teellm.engine.kernels.available() says which).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "teellm.engine._bf16",
            sources=["src/teellm/engine/_bf16.c"],
            extra_compile_args=["-O3", "-fopenmp"],
            extra_link_args=["-fopenmp"],
            optional=True,
        )
    ]
)
