"""cProfile enabled inside the program (it takes sys.monitoring's profiler id on 3.12+)."""
import cProfile
import pstats


def work(n):
    return sum(i * i for i in range(n))


profile = cProfile.Profile()
profile.enable()
for _ in range(3):
    work(100)
profile.disable()
stats = pstats.Stats(profile).stats
print(sorted((name, calls) for (_, _, name), (calls, *_) in stats.items() if name == "work"))
