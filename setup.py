"""Only the optional compiled hot path lives here; everything else is in pyproject.toml."""

import os

from setuptools import Extension, setup

# Optional: without a C compiler callspan falls back to its pure-Python hot path.
# CALLSPAN_REQUIRE_EXTENSION=1 (set by scripts/test.sh) makes a failed build an error instead.
OPTIONAL = os.environ.get("CALLSPAN_REQUIRE_EXTENSION", "") != "1"

setup(
    ext_modules=[
        Extension(
            "callspan._hotpath",
            ["src/callspan/_hotpath.c"],
            optional=OPTIONAL,
            extra_compile_args=["-O2", "-Wall", "-Wno-missing-field-initializers"],
        )
    ]
)
