"""The state database: decisions, router statistics, leases and the upkeep journal in one SQLite file
(stdlib), so they survive restarts.

Each port has a small class of its own over one shared connection; `SQLiteState` is all of them on one
file. Each write is one committed transaction in WAL mode: a crash leaves the previous or the new row,
never half of one. Several processes may open the same file (`echolm explain` or `echolm upkeep` beside
a running proxy).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from echolm_middleware.core.types import Decision
from echolm_middleware.errors import StateUnavailable

logger = logging.getLogger("echolm")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    request_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    created_at REAL NOT NULL,
    body TEXT NOT NULL,
    recorded_by TEXT,
    feedback REAL
);
CREATE INDEX IF NOT EXISTS decisions_created ON decisions(created_at);
CREATE TABLE IF NOT EXISTS posteriors (
    tier TEXT NOT NULL,
    bucket TEXT NOT NULL,
    successes REAL NOT NULL,
    failures REAL NOT NULL,
    PRIMARY KEY (tier, bucket)
);
CREATE TABLE IF NOT EXISTS utility_weights (name TEXT PRIMARY KEY, value REAL NOT NULL);
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS upkeep_steps (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    step TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, seq)
);
"""


class _Connection:
    """One database file (or `:memory:`), one connection, one lock; the tables every part below uses."""

    def __init__(self, path: Path | str, busy_timeout_s: float = 1.0) -> None:
        self._path = str(path)
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            # How long a write waits while another process holds the database: a request's decision is
            # written in its time budget, so past this it fails open instead of holding a thread.
            self._db = sqlite3.connect(
                self._path, check_same_thread=False, timeout=busy_timeout_s, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(decisions)")}
            if "feedback" not in columns:  # a database written before feedback was kept once per request
                self._db.execute("ALTER TABLE decisions ADD COLUMN feedback REAL")
        except sqlite3.Error as exc:
            raise StateUnavailable(f"cannot open state database {self._path}: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StateUnavailable(f"state database {self._path}: {exc}") from exc

    def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, params).fetchall())
            except sqlite3.Error as exc:
                raise StateUnavailable(f"state database {self._path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()


class SQLiteDecisions(_Connection):
    """DecisionLog and DecisionHistory: every decision by request id, deleted `retention_s` after it was made.

    Decisions hold what callers asked, so their retention is a promise about personal data: it is kept
    on a timer (at open, then every `prune_every_s`), not on the next writes, which may never come.
    """

    def __init__(
        self,
        path: Path | str,
        retention_s: float | None = None,
        busy_timeout_s: float = 1.0,
        *,
        prune_every_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(path, busy_timeout_s)
        self._retention_s = retention_s
        self._clock = clock
        self._stopped = threading.Event()
        if retention_s is not None:
            self.prune()  # what expired while no process had the file open
            threading.Thread(
                target=self._prune_every, args=(prune_every_s,), name="echolm-state-retention", daemon=True
            ).start()

    def prune(self) -> int:
        """Delete the decisions older than the retention; how many were deleted."""
        if self._retention_s is None:
            return 0
        with self._transaction() as db:
            cursor = db.execute("DELETE FROM decisions WHERE created_at < ?", (self._clock() - self._retention_s,))
            return cursor.rowcount

    def _prune_every(self, interval_s: float) -> None:
        while not self._stopped.wait(interval_s):
            try:
                self.prune()
            except StateUnavailable as exc:  # a locked or vanished file: the next round tries again
                logger.warning("echolm: pruning old decisions failed: %s", exc)

    def close(self) -> None:
        self._stopped.set()
        super().close()

    def put(self, decision: Decision) -> None:
        body = json.dumps(decision.to_dict(), ensure_ascii=True)
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO decisions (request_id, tenant, created_at, body) VALUES (?, ?, ?, ?)",
                (decision.request_id, decision.tenant, decision.created_at, body),
            )

    def get(self, request_id: str) -> Decision | None:
        rows = self._query("SELECT body FROM decisions WHERE request_id = ?", (request_id,))
        return Decision.from_dict(json.loads(str(rows[0][0]))) if rows else None

    def mark_recorded(self, request_id: str, outcome: str) -> bool:
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE decisions SET recorded_by = ? WHERE request_id = ? AND recorded_by IS NULL",
                (outcome, request_id),
            )
            return cursor.rowcount == 1

    def mark_feedback(self, request_id: str, score: float) -> bool:
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE decisions SET feedback = ? WHERE request_id = ? AND feedback IS NULL", (score, request_id)
            )
            return cursor.rowcount == 1

    def recorded_by(self, request_id: str) -> str | None:
        rows = self._query("SELECT recorded_by FROM decisions WHERE request_id = ?", (request_id,))
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    def recent(self, since: float) -> list[Decision]:
        rows = self._query("SELECT body FROM decisions WHERE created_at >= ? ORDER BY created_at", (since,))
        return [Decision.from_dict(json.loads(str(row[0]))) for row in rows]


class SQLiteRouterStats(_Connection):
    """RouterStatsStore: the router's Beta posteriors and the fitted utility weights."""

    def load_posteriors(self) -> dict[tuple[str, str], tuple[float, float]]:
        rows = self._query("SELECT tier, bucket, successes, failures FROM posteriors")
        return {(str(t), str(b)): (float(s), float(f)) for t, b, s, f in rows}  # type: ignore[arg-type]

    def add_to_posterior(self, tier: str, bucket: str, successes: float, failures: float) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO posteriors (tier, bucket, successes, failures) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(tier, bucket) DO UPDATE SET successes = successes + excluded.successes, "
                "failures = failures + excluded.failures",
                (tier, bucket, successes, failures),
            )

    def load_weights(self) -> dict[str, float] | None:
        rows = self._query("SELECT name, value FROM utility_weights")
        return {str(name): float(value) for name, value in rows} or None  # type: ignore[arg-type]

    def save_weights(self, weights: Mapping[str, float]) -> None:
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO utility_weights (name, value) VALUES (?, ?)", list(weights.items()))


class SQLiteLeases(_Connection):
    """Leases: one holder at a time across the processes that share this file."""

    def try_lease(self, name: str, holder: str, ttl_s: float, now: float) -> bool:
        with self._transaction() as db:
            row = db.execute("SELECT holder, expires_at FROM leases WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] != holder and float(row[1]) > now:
                return False
            db.execute(
                "INSERT OR REPLACE INTO leases (name, holder, expires_at) VALUES (?, ?, ?)", (name, holder, now + ttl_s)
            )
            return True

    def lease_holder(self, name: str, now: float) -> str | None:
        rows = self._query("SELECT holder FROM leases WHERE name = ? AND expires_at > ?", (name, now))
        return str(rows[0][0]) if rows else None

    def release_lease(self, name: str, holder: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))


class SQLiteUpkeepJournal(_Connection):
    """UpkeepJournal: a pass's planned steps, so a killed pass is finished by the next one."""

    def unfinished_pass(self) -> tuple[str, list[tuple[int, str]]] | None:
        rows = self._query("SELECT run_id FROM upkeep_steps WHERE done = 0 ORDER BY rowid LIMIT 1")
        if not rows:
            return None
        run_id = str(rows[0][0])
        steps = self._query("SELECT seq, step FROM upkeep_steps WHERE run_id = ? AND done = 0 ORDER BY seq", (run_id,))
        return run_id, [(int(seq), str(step)) for seq, step in steps]  # type: ignore[call-overload]

    def begin_pass(self, run_id: str, steps: Sequence[str]) -> None:
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO upkeep_steps (run_id, seq, step) VALUES (?, ?, ?)",
                [(run_id, seq, step) for seq, step in enumerate(steps)],
            )

    def finish_step(self, run_id: str, seq: int) -> None:
        # Done steps stay until the last one, so progress shows in the table while a pass runs.
        with self._transaction() as db:
            db.execute("UPDATE upkeep_steps SET done = 1 WHERE run_id = ? AND seq = ?", (run_id, seq))
            db.execute(
                "DELETE FROM upkeep_steps WHERE run_id = ? "
                "AND NOT EXISTS (SELECT 1 FROM upkeep_steps WHERE run_id = ? AND done = 0)",
                (run_id, run_id),
            )


class SQLiteState(SQLiteDecisions, SQLiteRouterStats, SQLiteLeases, SQLiteUpkeepJournal):
    """Every part above on one file and one connection: DecisionLog, DecisionHistory, RouterStatsStore,
    Leases and UpkeepJournal (an in-memory database is private to its connection, so they must share it)."""
