"""Warnings: DeprecationWarning shown in __main__, filters as Python installs them, once per place."""
import warnings


def old():
    warnings.warn("old() is deprecated", DeprecationWarning, stacklevel=2)


old()
old()
warnings.warn("a user warning")  # noqa: B028 (the default stacklevel is part of the output)
print(len(warnings.filters), [f[0] for f in warnings.filters])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    old()
print([str(w.message) for w in caught])
