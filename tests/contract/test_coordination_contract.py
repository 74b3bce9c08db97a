"""LoadBoard and Leases contract: this process's own (LoadTracker, SQLiteState) and Redis's, on a real server.

The Redis cases also check what only a shared board can show: two workers' boards see each other's
requests, and the board keeps routing (on its own count) while Redis is down and recovers when it returns.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from echolm_lab.local_services import Service, free_port, start_redis
from echolm_middleware.backends.redis_coordination import RedisLeases, RedisLoadBoard, redis_client
from echolm_middleware.backends.sqlite_state import SQLiteState
from echolm_middleware.config import CoordinationSettings
from echolm_middleware.core.ports import Leases, LoadBoard
from echolm_middleware.core.routing import LoadTracker


@pytest.fixture(scope="module")
def redis_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = start_redis(free_port(), tmp_path_factory.mktemp("redis"))
    yield service
    service.stop()


def _settings(service: Service, **overrides: object) -> CoordinationSettings:
    values: dict[str, object] = {
        "redis_url": service.url,
        "key_prefix": "t" + secrets.token_hex(4),
        "retry_after_s": 0.2,
    }
    values.update(overrides)
    return CoordinationSettings(**values)  # type: ignore[arg-type]


def _redis_board(settings: CoordinationSettings, stale_after_s: float = 600.0) -> RedisLoadBoard:
    return RedisLoadBoard(redis_client(settings), settings, window_s=2.0, stale_after_s=stale_after_s)


@pytest.fixture(params=["local", "redis"])
def board(request: pytest.FixtureRequest) -> LoadBoard:
    if request.param == "local":
        return LoadTracker(window_s=2.0)
    return _redis_board(_settings(request.getfixturevalue("redis_service")))


@pytest.fixture(params=["sqlite", "redis"])
def leases(request: pytest.FixtureRequest, tmp_path: Path) -> Leases:
    if request.param == "sqlite":
        return SQLiteState(tmp_path / "state.db")
    settings = _settings(request.getfixturevalue("redis_service"))
    return RedisLeases(redis_client(settings), settings)


# ---- LoadBoard ------------------------------------------------------------------------------------


def test_the_queue_counts_requests_in_flight_and_this_one(board: LoadBoard) -> None:
    board.begin("strong", "r1")
    board.begin("strong", "r2")
    board.begin("cheap", "r3")

    assert board.queue_if_added(["cheap", "strong", "idle"]) == {"cheap": 2.0, "strong": 3.0, "idle": 1.0}
    assert board.in_flight() == {"cheap": 1, "strong": 2}


def test_a_finished_request_stops_counting_and_a_second_finish_is_ignored(board: LoadBoard) -> None:
    board.begin("strong", "r1")
    board.finish("r1")
    board.finish("r1")
    board.finish("never-begun")

    assert board.queue_if_added(["strong"]) == {"strong": 1.0}


def test_the_moving_average_rises_while_requests_are_in_flight(board: LoadBoard) -> None:
    board.loads()
    board.begin("strong", "r1")
    board.begin("strong", "r2")
    time.sleep(0.3)

    loads = board.loads()

    assert 0.0 < loads["strong"] <= 2.0


# ---- Leases ---------------------------------------------------------------------------------------


def test_one_holder_at_a_time_and_the_holder_renews(leases: Leases) -> None:
    now = time.time()
    assert leases.try_lease("pass:1", "worker-a", ttl_s=30, now=now)
    assert not leases.try_lease("pass:1", "worker-b", ttl_s=30, now=now)
    assert leases.try_lease("pass:1", "worker-a", ttl_s=30, now=now)
    assert leases.lease_holder("pass:1", now) == "worker-a"


def test_only_the_holder_releases(leases: Leases) -> None:
    now = time.time()
    leases.try_lease("pass:2", "worker-a", ttl_s=30, now=now)

    leases.release_lease("pass:2", "worker-b")
    assert leases.lease_holder("pass:2", now) == "worker-a"

    leases.release_lease("pass:2", "worker-a")
    assert leases.lease_holder("pass:2", now) is None
    assert leases.try_lease("pass:2", "worker-b", ttl_s=30, now=now)


def test_an_expired_lease_goes_to_the_next_holder(leases: Leases) -> None:
    # SQLite compares against the caller's clock, Redis expires the key itself: wait out a short TTL.
    start = time.time()
    assert leases.try_lease("pass:3", "worker-a", ttl_s=0.2, now=start)
    time.sleep(0.4)
    later = time.time()
    assert leases.try_lease("pass:3", "worker-b", ttl_s=30, now=later)
    assert leases.lease_holder("pass:3", later) == "worker-b"


# ---- Redis only: shared, stale, down and back -----------------------------------------------------


def test_two_workers_see_each_others_requests(redis_service: Service) -> None:
    settings = _settings(redis_service)
    worker_a, worker_b = _redis_board(settings), _redis_board(settings)

    worker_a.begin("strong", "a1")
    worker_b.begin("strong", "b1")

    assert worker_a.queue_if_added(["strong"]) == {"strong": 3.0}
    worker_b.finish("b1")
    assert worker_a.queue_if_added(["strong"]) == {"strong": 2.0}


def test_a_request_whose_worker_died_stops_counting_after_the_stale_bound(redis_service: Service) -> None:
    settings = _settings(redis_service)
    dead_worker = _redis_board(settings, stale_after_s=0.3)
    dead_worker.begin("strong", "lost")  # never finished: its worker was killed
    survivor = _redis_board(settings, stale_after_s=0.3)

    assert survivor.queue_if_added(["strong"]) == {"strong": 2.0}
    time.sleep(0.5)
    assert survivor.queue_if_added(["strong"]) == {"strong": 1.0}


def test_leases_exclude_each_other_across_clients(redis_service: Service) -> None:
    settings = _settings(redis_service)
    first, second = RedisLeases(redis_client(settings), settings), RedisLeases(redis_client(settings), settings)

    taken = [lease.try_lease("upkeep:42", holder, ttl_s=30, now=0.0) for lease, holder in ((first, "a"), (second, "b"))]

    assert taken == [True, False]


def test_with_redis_down_the_board_routes_on_its_own_count_and_recovers(tmp_path: Path) -> None:
    service = start_redis(free_port(), tmp_path / "redis")
    settings = _settings(service)
    board, other = _redis_board(settings), _redis_board(settings)
    other.begin("strong", "elsewhere")
    board.begin("strong", "here-1")
    assert board.queue_if_added(["strong"]) == {"strong": 3.0}

    service.kill()
    started = time.perf_counter()
    board.begin("strong", "here-2")
    down = board.queue_if_added(["strong"])
    board.finish("here-1")  # Redis cannot take this end now: kept and retried
    elapsed = time.perf_counter() - started

    assert down == {"strong": 3.0}  # this worker's own two, and this one
    assert board.degraded.failures >= 1
    assert elapsed < 1.0  # connection refused is immediate, and the board then stops asking

    restarted = start_redis(service.port, tmp_path / "redis")  # same port and data: as after a restart
    try:
        time.sleep(settings.retry_after_s + 0.1)
        board.finish("here-2")
        # "here-1" was retried, "here-2" finished; "elsewhere" persisted in Redis's append-only file.
        assert board.queue_if_added(["strong"]) == {"strong": 2.0}
    finally:
        restarted.stop()


def test_with_redis_down_no_lease_is_taken(tmp_path: Path) -> None:
    service = start_redis(free_port(), tmp_path / "redis")
    settings = _settings(service)
    leases = RedisLeases(redis_client(settings), settings)
    service.kill()

    assert not leases.try_lease("upkeep:1", "a", ttl_s=30, now=0.0)
    assert leases.lease_holder("upkeep:1", 0.0) is None
    leases.release_lease("upkeep:1", "a")  # logged, not raised
