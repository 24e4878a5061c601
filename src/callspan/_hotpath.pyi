# Types of the optional compiled module built from _hotpath.c.
from collections.abc import Iterable, Sequence
from typing import Any

RECORD_SIZE: int
R_OUT: int
R_VIA_TASK: int
UNKEYABLE_AFTER: int
RET_SIZE_EVERY: int


def siphash24(k0: int, k1: int, message: int, /) -> int: ...
def fingerprint(value: Any, /) -> int | None: ...
def unhashable_args(key: Any, /) -> tuple[int | None, str]: ...
def interval_clock_replay(interval: int, walls: Sequence[int], reals: Iterable[int], /) -> list[int]: ...
def process_records(builder: Any, records: list[list[Any]], /) -> None: ...

class Out:
    state: int
    node: Any
    summaries: dict[Any, Any] | None
    kept: int
    walls: Any
    seen: int
    threshold: int

class Summary:
    info: Any
    count: int
    errors: int
    wall: int
    run: int
    cpu_total: int
    cpu_self: int
    calls: list[tuple[int | None, int | None, int, int, int]]
    rate: float
    def __init__(self, info: Any, /) -> None: ...

class HotPath:
    def __init__(self, recorder: Any, current: Any, kwd_mark: Any, disable: Any, native_clock: bool, /) -> None: ...
    def py_start(self, code: Any, offset: int, /) -> Any: ...
    def py_resume(self, code: Any, offset: int, /) -> Any: ...
    def py_return(self, code: Any, offset: int, value: Any, /) -> Any: ...
    def py_yield(self, code: Any, offset: int, value: Any, /) -> Any: ...
    def py_unwind(self, code: Any, offset: int, exc: BaseException, /) -> Any: ...
    def py_throw(self, code: Any, offset: int, exc: BaseException, /) -> Any: ...
    def configure_setprofile(self, unknown: BaseException, returns: Any, yields: Any, resume_op: int,
                             yield_at_resume: bool, /) -> None: ...
    def profile_install(self) -> None: ...
    def profile_uninstall(self) -> None: ...
    def thread_bootstrap(self, frame: Any, event: str, arg: Any, /) -> None: ...

class ThreadStateBase:
    stack: Any
    ident: Any
    name: Any
    cpu: Any
    cpu_fd: int

class CodeInfoBase:
    code: Any
    kind: int
    keys: bool
    is_method: bool
    arg_names: Any
    varargs: Any
    kwonly: Any
    varkw: Any
    unkeyed: int
    sized: int
    unkeyed_args: Any
