"""lock_hash.py with callspan's default (user hashes run) and the lock-taking type named in
CALLSPAN_USER_HASH_SKIP: its __hash__ never runs in the hook, so the program finishes as under
python instead of deadlocking (a method called while holding the object's lock, whose __hash__
takes the same lock, as lru_cache on deposit would)."""
#: env: CALLSPAN_USER_HASH_SKIP=__main__.Account
import threading


class Account:
    def __init__(self):
        self.lock = threading.Lock()
        self.balance = 0

    def __hash__(self):
        with self.lock:
            return hash(self.balance)

    def deposit(self, amount):
        self.balance += amount
        return self.balance


def apply(account, amount):
    with account.lock:
        return account.deposit(amount)


account = Account()
for i in range(50):
    apply(account, i)
print(account.balance)
