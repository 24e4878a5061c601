"""lock_hash.py with callspan's default (user hashes run) and its lock-taking type named in
CALLSPAN_USER_HASH_SKIP: Account.__hash__ never runs in the hook, so the program finishes as under
python instead of deadlocking (a method called while holding the object's lock, whose __hash__
takes the same lock, as lru_cache on deposit would)."""
#: env: CALLSPAN_USER_HASH_SKIP=lock_hash.Account
import lock_hash  # noqa: F401  (the program runs at import, its classes in module lock_hash)
