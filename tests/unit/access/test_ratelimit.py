"""Login failures are limited per user and per source, with the time injected."""

from binome.access.ratelimit import LoginRateLimiter


def test_user_limit_and_window():
    rl = LoginRateLimiter(user_limit=3, source_limit=100, window=60)
    for t in (0, 1, 2):
        assert rl.retry_after("alice@pve", "10.0.0.1", t) == 0
        rl.failure("alice@pve", "10.0.0.1", t)
    assert rl.retry_after("Alice@pve", "10.0.0.9", 3) == 57
    assert rl.retry_after("bob@pve", "10.0.0.1", 3) == 0
    assert rl.retry_after("alice@pve", "10.0.0.1", 60) == 0
    assert "try again in" in rl.message(57)


def test_source_limit_survives_a_success():
    rl = LoginRateLimiter(user_limit=100, source_limit=3, window=60)
    for i in range(3):
        rl.failure(f"u{i}@pve", "10.0.0.1", 0)
    rl.success("u0@pve")
    assert rl.retry_after("new@pve", "10.0.0.1", 1) == 59
    assert rl.retry_after("new@pve", "10.0.0.2", 1) == 0


def test_success_clears_user_count_and_prune_bounds_memory():
    rl = LoginRateLimiter(user_limit=2, source_limit=100, window=60)
    rl.failure("a@pve", "s", 0)
    rl.failure("a@pve", "s", 0)
    rl.success("a@pve")
    assert rl.retry_after("a@pve", "t", 1) == 0
    rl.failure("b@pve", "x", 0)
    rl.prune(100)
    assert not rl._users and not rl._sources


def test_the_source_limit_counts_distinct_users():
    rl = LoginRateLimiter(user_limit=100, source_limit=3, window=60)
    for t in range(10):
        rl.failure("same@pve", "10.0.0.1", t)      # one user guessed again and again
    assert rl.retry_after("other@pve", "10.0.0.1", 10) == 0
    rl.failure("u1@pve", "10.0.0.1", 11)
    rl.failure("u2@pve", "10.0.0.1", 12)
    assert rl.retry_after("other@pve", "10.0.0.1", 13) == 9 + 60 - 13
