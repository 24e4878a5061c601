"""A method called while holding its object's lock, whose __hash__ takes the same lock: under
python nothing hashes the object, so this finishes at once; a hook hashing it would deadlock
(as lru_cache on deposit would): CALLSPAN_USER_HASH=off is how such a program is traced."""
#: env: CALLSPAN_USER_HASH=off
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
