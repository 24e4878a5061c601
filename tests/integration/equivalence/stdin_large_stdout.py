#: stdin: alpha\nbeta\ngamma\n
"""Reads stdin, writes about 10 MB to stdout."""
import sys

lines = sys.stdin.read().splitlines()
print(lines)
chunk = ("x" * 99 + "\n") * 1000
for _ in range(100):
    sys.stdout.write(chunk)
print("done", len(lines))
