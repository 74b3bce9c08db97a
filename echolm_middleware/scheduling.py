"""The periodic upkeep job: APScheduler 3 in each proxy process, one pass per period between them.

Every proxy worker that loads our callback with `upkeep.schedule_minutes` set starts this scheduler;
the job takes a lease named after the period in the shared state database before it runs, so however
many workers fire, one pass runs per period (see `echolm_middleware.upkeep.run_exclusive`).
"""

from __future__ import annotations

import logging
from typing import Any

from echolm_middleware.metrics import metrics, quietly
from echolm_middleware.upkeep import Upkeep, process_holder, run_exclusive

JOB_ID = "echolm-upkeep"
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
        id=JOB_ID,
        replace_existing=True,
        max_instances=1,  # a pass still running when the next firing comes is not started twice
        coalesce=True,  # firings missed while the process slept run once, not many times
        args=[upkeep, holder or process_holder(), period_s],
    )
    scheduler.start()
    return scheduler
