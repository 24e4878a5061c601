#: args: 7
"""sys.exit(code) from nested calls, and SystemExit raised in a finally-protected block."""
import sys


def leave(code: int) -> None:
    try:
        sys.exit(code)
    finally:
        print("finally runs", flush=True)


leave(int(sys.argv[1]))
