from array import array
from collections.abc import Sequence
from typing import Any

def sort_columns(columns: Sequence[array[Any]], key: Sequence[int]) -> list[array[Any]]: ...
