"""Only the optional compiled parts live here; everything else is in pyproject.toml."""

import os

from setuptools import Extension, setup

# Optional: without a C compiler callspan falls back to its pure-Python hot path and the
# analyzer to its pure-Python OTLP reader and column sorting.
# CALLSPAN_REQUIRE_EXTENSION=1 (set by scripts/test.sh) makes a failed build an error instead.
OPTIONAL = os.environ.get("CALLSPAN_REQUIRE_EXTENSION", "") != "1"

setup(
    ext_modules=[
        Extension(
            "callspan._hotpath",
            ["src/callspan/_hotpath.c", "src/callspan/_record.c", "src/callspan/_keys.c",
             "src/callspan/_aggregate.c"],
            depends=["src/callspan/_callspan.h"],
            optional=OPTIONAL,
            extra_compile_args=["-O2", "-Wall", "-Wno-missing-field-initializers"],
        ),
        Extension(
            "callspan.analysis._otlpscan",
            ["src/callspan/analysis/_otlpscan.c"],
            optional=OPTIONAL,
            extra_compile_args=["-O2", "-Wall", "-Wno-missing-field-initializers"],
        ),
        Extension(
            "callspan.analysis._columns",
            ["src/callspan/analysis/_columns.c"],
            optional=OPTIONAL,
            extra_compile_args=["-O2", "-Wall", "-Wno-missing-field-initializers"],
        ),
    ]
)
