"""An uncaught exception with a cause and a context, raised from nested calls."""


class AppError(Exception):
    pass


def parse(text: str) -> int:
    return int(text)


def load(text: str) -> int:
    try:
        return parse(text)
    except ValueError as exc:
        raise AppError(f"cannot load {text!r}") from exc


def main() -> None:
    try:
        load("x")
    except AppError:
        {}["missing"]


print("before")
main()
