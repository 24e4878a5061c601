"""When the builder thread builds (callspan.tracer.session.BuildPacer), on injected clocks."""

from __future__ import annotations

from callspan.tracer.session import BuildPacer


class Clocks:
    """The wall clock and the process's and the builder thread's CPU clocks, moved by hand."""

    def __init__(self) -> None:
        self.wall = 100.0
        self.process = 10.0
        self.own = 1.0

    def advance(self, wall: float, program_cpu: float, own_cpu: float = 0.0) -> None:
        self.wall += wall
        self.own += own_cpu
        self.process += program_cpu + own_cpu

    def pacer(self, interval: float = 0.5, max_pending: int = 200_000) -> BuildPacer:
        return BuildPacer(interval, max_pending, wall=lambda: self.wall, process_cpu=lambda: self.process,
                          own_cpu=lambda: self.own)


FAR = 1e9  # an export of the aggregates that is not due


def test_an_idle_program_gets_a_pass_every_interval() -> None:
    clocks = Clocks()
    pacer = clocks.pacer()
    for _ in range(20):
        clocks.advance(0.5, program_cpu=0.2)
        assert not pacer.defer(10, profile_due=FAR)
        clocks.advance(0.0, program_cpu=0.0, own_cpu=0.3)  # the pass itself
        pacer.built()
    assert pacer.deferred == 0


def test_a_busy_program_gets_a_pass_every_five_seconds() -> None:
    clocks = Clocks()
    pacer = clocks.pacer()
    decisions = []
    for _ in range(30):
        clocks.advance(0.5, program_cpu=0.5)
        deferred = pacer.defer(10, profile_due=FAR)
        decisions.append(deferred)
        if not deferred:
            clocks.advance(0.125, program_cpu=0.0, own_cpu=0.125)
            pacer.built()
    # 0.5 s looks: passes at 5.0 s after the last one (the 10th look), then every 10 looks.
    built_at = [i for i, deferred in enumerate(decisions) if not deferred]
    assert built_at == [9, 19, 29]
    assert pacer.deferred == 27


def test_the_builders_own_cpu_is_not_the_programs() -> None:
    clocks = Clocks()
    pacer = clocks.pacer()
    # An idle program and a builder thread that was busy in the window: not a busy program.
    clocks.advance(0.5, program_cpu=0.05, own_cpu=0.45)
    assert not pacer.defer(10, profile_due=FAR)


def test_the_threshold_is_ninety_percent_of_one_cpu() -> None:
    clocks = Clocks()
    pacer = clocks.pacer()
    clocks.advance(1.0, program_cpu=0.89)
    assert not pacer.defer(10, profile_due=FAR)
    clocks.advance(1.0, program_cpu=0.91)
    assert pacer.defer(10, profile_due=FAR)
    clocks.advance(1.0, program_cpu=1.8)  # two threads on two CPUs
    assert pacer.defer(10, profile_due=FAR)


def test_a_pass_is_not_deferred_past_a_tenth_of_the_pending_bound() -> None:
    clocks = Clocks()
    pacer = clocks.pacer(max_pending=1000)
    clocks.advance(0.5, program_cpu=0.5)
    assert pacer.defer(99, profile_due=FAR)
    clocks.advance(0.5, program_cpu=0.5)
    assert not pacer.defer(100, profile_due=FAR)


def test_a_pass_is_not_deferred_when_the_aggregates_are_due() -> None:
    clocks = Clocks()
    pacer = clocks.pacer()
    clocks.advance(0.5, program_cpu=0.5)
    assert pacer.defer(10, profile_due=clocks.wall + 0.1)
    clocks.advance(0.5, program_cpu=0.5)
    assert not pacer.defer(10, profile_due=clocks.wall)


def test_a_longer_flush_interval_than_the_busy_delay_is_kept() -> None:
    clocks = Clocks()
    pacer = clocks.pacer(interval=8.0)
    clocks.advance(8.0, program_cpu=8.0)
    assert not pacer.defer(10, profile_due=FAR)  # a look per 8 s: no pass is skipped
    assert pacer.max_defer == 8.0
