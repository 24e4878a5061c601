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
            "callspan.tracer._hotpath",
            # The tracer's hot path, one job per file: the callbacks and transitions, the record
            # type, key hashing, the aggregates; _callspan.h is what they share.
            ["src/callspan/tracer/c/_hotpath.c", "src/callspan/tracer/c/_clock.c", "src/callspan/tracer/c/_record.c", "src/callspan/tracer/c/_keys.c",
             "src/callspan/tracer/c/_aggregate.c"],
            depends=["src/callspan/tracer/c/_callspan.h"],
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
