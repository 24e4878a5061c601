"""coverage.py measuring the script itself (it keys its data by the absolute __file__)."""
import os

import coverage

cov = coverage.Coverage(data_file=None, include=[__file__])
cov.start()


def branch(x):
    if x > 0:
        return "positive"
    return "not positive"


branch(1)
cov.stop()
data = cov.get_data()
lines = sorted(data.lines(os.path.abspath(__file__)) or [])
first = branch.__code__.co_firstlineno
print([line - first for line in lines if line >= first])
