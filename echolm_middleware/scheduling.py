"""The periodic jobs of a proxy process (APScheduler 3): the upkeep pass, or eviction alone.

Every proxy worker that loads our callback with `upkeep.schedule_minutes` set runs the upkeep job; it
takes a lease named after the period in the shared state database before it runs, so however many
workers fire, one pass runs per period (see `echolm_middleware.upkeep.run_exclusive`). Without it, each
worker evicts every `upkeep.evict_every_minutes` (on by default), which calls no model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from echolm_middleware.config import UpkeepSettings
from echolm_middleware.metrics import metrics, quietly
from echolm_middleware.upkeep import Upkeep, process_holder, run_exclusive

JOB_ID = "echolm-upkeep"
FIRE_AFTER_PERIOD_START_S = 5.0
logger = logging.getLogger("echolm")


def upkeep_job(upkeep: Upkeep, holder: str, period_s: float) -> None:
    """One scheduled firing; never raises (a failed pass is logged, and the journal resumes it next time)."""
    passes = metrics().upkeep_passes
    try:
        report = run_exclusive(upkeep, holder, period_s=period_s)
    except Exception as exc:
        logger.error("echolm upkeep pass failed: %s", exc)
        quietly(lambda: passes.labels(outcome="failed").inc())
        return
    if report is None:
        logger.info("echolm upkeep: another process runs this period's pass")
        quietly(lambda: passes.labels(outcome="skipped").inc())
        return
    m = metrics()
    quietly(lambda: passes.labels(outcome="ran").inc())
    quietly(lambda: m.upkeep_tokens.inc(report.tokens_spent))
    quietly(lambda: m.upkeep_cost.inc(report.usd_spent))
    logger.warning(
        "echolm upkeep pass %s for period %s: %d step(s), %d strong-tier tokens, evicted %d",
        report.run_id,
        report.period,
        len(report.steps),
        report.tokens_spent,
        sum(report.evicted.values()) + sum(report.expired.values()),
    )


def first_firing_anchor(period_s: float) -> datetime:
    """The instant every worker's firings are counted from: a little after an epoch-aligned period start.

    Periods are `time // period_s` (the lease's name), so workers that fire a little after each period
    starts all contend for the same period's lease, whenever each one started; one that fired at its
    own start time plus n periods could land in the period before or after its peers'. The offset keeps a
    worker whose clock runs slightly behind out of the previous period.
    """
    return datetime.fromtimestamp(min(FIRE_AFTER_PERIOD_START_S, period_s / 10), tz=UTC)


def start_upkeep_scheduler(upkeep: Upkeep, minutes: float, holder: str | None = None) -> Any:
    """Start a background APScheduler running the upkeep every `minutes`; returns the scheduler."""
    from echolm_middleware.backends._lazy import require

    background = require("apscheduler.schedulers.background", "scheduler")
    scheduler = background.BackgroundScheduler(daemon=True)
    period_s = minutes * 60.0
    scheduler.add_job(
        upkeep_job,
        "interval",
        seconds=period_s,
        start_date=first_firing_anchor(period_s),  # long past: the next firing is the next period's
        id=JOB_ID,
        replace_existing=True,
        max_instances=1,  # a pass still running when the next firing comes is not started twice
        coalesce=True,  # firings missed while the process slept run once, not many times
        args=[upkeep, holder or process_holder(), period_s],
    )
    scheduler.start()
    return scheduler


EVICTION_JOB_ID = "echolm-eviction"


def eviction_job(upkeep: Upkeep) -> None:
    """One eviction round; never raises (the next round tries again)."""
    try:
        report = upkeep.evict()
    except Exception as exc:
        logger.error("echolm eviction failed: %s", exc)
        return
    removed = sum(report.evicted.values()) + sum(report.expired.values())
    if removed:
        logger.warning(
            "echolm eviction: %d expired, %d over budget",
            sum(report.expired.values()),
            removed - sum(report.expired.values()),
        )


def start_eviction_scheduler(upkeep: Upkeep, minutes: float) -> Any:
    """Without a scheduled upkeep, keep `ttl_days` and the budgets anyway: eviction alone every `minutes`.

    Every worker runs it: eviction is idempotent and calls no model, so no lease is needed.
    """
    from echolm_middleware.backends._lazy import require

    background = require("apscheduler.schedulers.background", "scheduler")
    scheduler = background.BackgroundScheduler(daemon=True)
    scheduler.add_job(
        eviction_job,
        "interval",
        seconds=minutes * 60.0,
        id=EVICTION_JOB_ID,
        replace_existing=True,
        max_instances=1,
        coalesce=True,
        next_run_time=datetime.now(UTC),  # once at start too: what expired while the proxy was down
        args=[upkeep],
    )
    scheduler.start()
    return scheduler


def start_schedules(settings: UpkeepSettings, build_upkeep: Callable[[], Upkeep]) -> Any | None:
    """A proxy's schedule: whole passes every `schedule_minutes` (each ends with eviction), else eviction
    alone every `evict_every_minutes`; None when both are off."""
    if settings.schedule_minutes is not None:
        return start_upkeep_scheduler(build_upkeep(), settings.schedule_minutes)
    if settings.evict_every_minutes is not None:
        return start_eviction_scheduler(build_upkeep(), settings.evict_every_minutes)
    return None
