"""``python -m callspan.analysis``: the analyzer on its own (same as ``callspan analyze``)."""

from __future__ import annotations

import argparse
import sys

from callspan.analysis.cli import add_analyze_arguments, run_analyze


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m callspan.analysis",
        description="Report cache opportunities, CPU by call stack and latency from callspan traces.")
    add_analyze_arguments(parser)
    return run_analyze(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
