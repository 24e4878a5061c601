"""multiprocessing with the fork, forkserver and spawn start methods."""
import multiprocessing as mp


def square(x):
    return x * x


def report(queue, name):
    queue.put((name, square(7)))


if __name__ == "__main__":
    for method in ("fork", "forkserver", "spawn"):
        context = mp.get_context(method)
        with context.Pool(2) as pool:
            print(method, pool.map(square, range(6)))
        queue = context.Queue()
        process = context.Process(target=report, args=(queue, method))
        process.start()
        print(queue.get())
        process.join()
        print(method, "exitcode", process.exitcode)
