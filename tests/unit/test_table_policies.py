"""Policies scored off an answers table: reuse of the nearest pool answer, the semantic cache, the
cross-fitted difficulty router, and the throughput ceiling each policy's choices allow."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from echolm_lab.bench.answers_table import CHEAP, CHEAP_WITH_EXAMPLES, STRONG, Answer
from echolm_lab.bench.table_policies import (
    REUSE,
    Neighbour,
    ceiling,
    cross_fitted_ease,
    difficulty_router,
    nearest_in_pool,
    oracle_with_reuse,
    semantic_cache,
    service_times,
    with_reuse,
)
from echolm_lab.bench.table_scores import fixed


def topic_embed(texts: Sequence[str]) -> list[list[float]]:
    """A vector per text that says which topic word it holds (cosine 1 within a topic, 0 across)."""
    topics = ("card", "transfer", "refund", "pin")
    return [[1.0 if topic in text else 0.0 for topic in topics] + [0.01] for text in texts]


def test_each_request_reuses_the_answer_of_its_nearest_pool_prompt() -> None:
    pool = {"my card is lost": "lost_card", "a refund please": "request_refund"}

    near = nearest_in_pool(topic_embed, pool, ["where is my card", "refund my order"])

    assert near["where is my card"].answer == "lost_card"
    assert near["refund my order"].answer == "request_refund"
    assert near["where is my card"].similarity == pytest.approx(1.0, abs=1e-3)


def test_the_semantic_cache_reuses_only_at_or_above_its_threshold() -> None:
    neighbours = {"a": Neighbour("a'", "x", 0.95), "b": Neighbour("b'", "y", 0.85)}

    policy = semantic_cache(neighbours, 0.9)

    assert (policy("a"), policy("b"), policy("never seen")) == (REUSE, STRONG, STRONG)


def test_a_reused_answer_is_scored_by_the_workloads_metric_beside_the_tables_choices() -> None:
    scored = {"q": {STRONG: 1.0, CHEAP: 0.0}}

    rows = with_reuse(scored, {"q": Neighbour("q'", "right", 0.9)}, lambda answer, prompt: float(answer == "right"))

    assert rows == {"q": {STRONG: 1.0, CHEAP: 0.0, REUSE: 1.0}}
    assert scored == {"q": {STRONG: 1.0, CHEAP: 0.0}}  # the table's own scores untouched


def test_the_difficulty_router_predicts_each_request_from_other_requests_labels_only() -> None:
    # Card questions: the cheap tier as good as the strong one; transfer questions: never.
    scored = {f"card question {n}": {STRONG: 1.0, CHEAP: 1.0} for n in range(20)}
    scored |= {f"transfer question {n}": {STRONG: 1.0, CHEAP: 0.0} for n in range(20)}
    # One card question the cheap tier got wrong: its own label must not decide its own route.
    scored["card question 0"] = {STRONG: 1.0, CHEAP: 0.0}

    policy = difficulty_router(topic_embed, scored, strong_share=0.5)

    assert all(policy(f"transfer question {n}") == STRONG for n in range(20))
    assert all(policy(f"card question {n}") == CHEAP for n in range(20))
    # Its predicted ease comes from its 10 nearest other card questions, all labelled easy: 1.0, not 0.9.
    assert cross_fitted_ease(topic_embed, scored)["card question 0"] == pytest.approx(1.0)


def test_the_oracle_takes_reuse_first_then_the_cheap_tier_then_its_examples() -> None:
    scored = {
        "r": {STRONG: 1.0, REUSE: 1.0, CHEAP: 1.0},
        "c": {STRONG: 1.0, REUSE: 0.0, CHEAP: 1.0},
        "e": {STRONG: 1.0, REUSE: 0.0, CHEAP: 0.0, CHEAP_WITH_EXAMPLES: 1.0},
        "s": {STRONG: 1.0, REUSE: 0.0, CHEAP: 0.0, CHEAP_WITH_EXAMPLES: 0.0},
    }

    policy = oracle_with_reuse(scored)

    assert [policy(p) for p in "rces"] == [REUSE, CHEAP, CHEAP_WITH_EXAMPLES, STRONG]


def _answer(item: str, choice: str, latency_s: float) -> Answer:
    return Answer(
        key=f"{item}/{choice}", workload="w", item=item, choice=choice, tier=choice, model_sha256="m",
        server_version="v", messages=[], system_sha256="", params={}, answer="a", finish_reason="stop",
        prompt_tokens=1, completion_tokens=1, latency_s=latency_s,
    )  # fmt: skip


def test_a_policys_ceiling_is_where_its_busiest_server_saturates_against_two_strong_servers() -> None:
    # The strong tier takes 1 s, the cheap tier 0.5 s, with examples 1.5 s (prefill is not free).
    prompts = [f"q{n}" for n in range(4)]
    answers = [_answer(p, c, t) for p in prompts for c, t in ((STRONG, 1.0), (CHEAP, 0.5), (CHEAP_WITH_EXAMPLES, 1.5))]
    times = service_times(answers)

    strong_only = ceiling(fixed(STRONG), times, prompts)
    cheap_only = ceiling(fixed(CHEAP), times, prompts)
    examples_for_half = ceiling(lambda p: CHEAP_WITH_EXAMPLES if p in ("q0", "q1") else STRONG, times, prompts)
    all_reused = ceiling(fixed(REUSE), times, prompts, reuse_s=0.01)

    # Strong-only on one strong server of the split: half of two strong servers; on two shared slots: the same.
    assert (strong_only.fixed_split, strong_only.elastic) == (0.5, 1.0)
    # All cheap: the cheap server alone at 2/s against 2/s; two slots at 4/s.
    assert (cheap_only.fixed_split, cheap_only.elastic) == (1.0, 2.0)
    # Half to a slower cheap choice: the cheap server saturates at 1/0.75 per s; the slots at 2/1.25.
    assert examples_for_half.fixed_split == pytest.approx((1 / 0.75) / 2)
    assert examples_for_half.elastic == pytest.approx((2 / 1.25) / 2)
    # Reuse costs our lookup only.
    assert all_reused.elastic == pytest.approx(100.0)


def test_a_policys_cost_is_its_chosen_answers_tokens_at_their_tiers_price_examples_included() -> None:
    from echolm_lab.bench.table_policies import cost_per_request, tokens_by_choice

    answers = [_answer("q", STRONG, 1.0), _answer("q", CHEAP, 0.5), _answer("q", CHEAP_WITH_EXAMPLES, 0.7)]
    answers[2].prompt_tokens = 499  # the examples: paid for as prompt tokens
    tokens = tokens_by_choice(answers)
    prices = {STRONG: 2.0, CHEAP: 0.1, CHEAP_WITH_EXAMPLES: 0.1}

    assert cost_per_request(fixed(STRONG), tokens, ["q"], prices) == pytest.approx(2 / 1000 * 2.0)
    assert cost_per_request(fixed(CHEAP_WITH_EXAMPLES), tokens, ["q"], prices) == pytest.approx(500 / 1000 * 0.1)
    assert cost_per_request(fixed(REUSE), tokens, ["q"], prices) == 0.0


def _topic_pool() -> dict[str, str]:
    """Card questions all share one right answer; each transfer question has its own."""
    pool = {f"card question {i}": "card_lost" for i in range(6)}
    pool.update({f"transfer question {i}": f"transfer_{i}" for i in range(6)})
    return pool


def _right(answer: str, prompt: str) -> float:
    """The pool's own answer is the right one; a card question is also answered by any card answer."""
    return float(answer == _topic_pool()[prompt])


def test_reuse_is_fitted_on_the_pool_without_each_item_seeing_itself() -> None:
    from echolm_lab.bench.table_reuse import fit_on_pool, nearest_candidates

    pool = _topic_pool()

    found = nearest_candidates(topic_embed, pool, list(pool), leave_self_out=True)
    fit = fit_on_pool(topic_embed, pool, _right)

    assert all(query not in [c.example.prompt for c in found[query]] for query in pool)
    assert fit is not None and fit.pool_items == 12
    # Reusing a card answer costs nothing, a transfer answer everything: the bar lets cards through only.
    assert fit.pool_reuse_share == pytest.approx(0.5)


def test_learned_reuse_serves_requests_whose_neighbours_agree_and_asks_the_strong_tier_otherwise() -> None:
    from echolm_lab.bench.table_reuse import fit_on_pool, learned_reuse, nearest_candidates

    pool = _topic_pool()
    fit = fit_on_pool(topic_embed, pool, _right)
    assert fit is not None

    found = nearest_candidates(topic_embed, pool, ["card question new", "transfer question new"])
    policy, probability = learned_reuse(found, fit)

    assert (policy("card question new"), policy("transfer question new")) == (REUSE, STRONG)
    assert probability["card question new"] > fit.threshold > probability["transfer question new"]


def test_a_pool_where_reuse_is_never_worse_or_always_worse_fits_nothing() -> None:
    from echolm_lab.bench.table_reuse import fit_on_pool

    pool = {f"card question {i}": "card_lost" for i in range(4)}

    assert fit_on_pool(topic_embed, pool, lambda answer, prompt: 1.0) is None  # one label only


def test_a_live_pass_is_paired_with_the_baselines_set_to_its_own_share_of_strong_calls() -> None:
    from echolm_lab.bench.answers_table import POOL
    from echolm_lab.bench.load import LoadPass
    from echolm_lab.bench.systems import Answered
    from echolm_lab.bench.table_bench import LivePass, compare_with_rivals
    from echolm_lab.bench.table_build import TableWorkload
    from echolm_lab.bench.table_policies import rivals_at_strong_share
    from echolm_lab.bench.workloads import Workload
    from echolm_lab.datasets import QARecord

    workload = Workload(
        name="w", items=[], system_prompt=None, metric="exact_match",
        score=lambda answer, item: float(answer == item.references[0]), max_tokens=8,
    )  # fmt: skip
    # Card questions: the cheap tier is right, their pool neighbour's answer wrong. Transfer questions: the
    # cheap tier is wrong, the pool's answer right. The strong tier is right on all.
    requests = [QARecord(f"card question {k}", ("card",)) for k in range(10)]
    requests += [QARecord(f"transfer question {k}", ("transfer",)) for k in range(10)]
    pool = [QARecord("card pool", ("card",)), QARecord("transfer pool", ("transfer",))]
    source = TableWorkload(workload, pool, requests)

    def line(item: str, choice: str, text: str) -> Answer:
        return Answer(
            key=f"{item}/{choice}", workload="w", item=item, choice=choice, tier=choice, model_sha256="m",
            server_version="v", messages=[], system_sha256="", params={}, answer=text, finish_reason="stop",
            prompt_tokens=1, completion_tokens=1, latency_s=1.0,
        )  # fmt: skip

    answers = [line("card pool", POOL, "wrong"), line("transfer pool", POOL, "transfer")]
    for item in requests:
        topic = item.references[0]
        answers += [line(item.prompt, STRONG, topic), line(item.prompt, CHEAP_WITH_EXAMPLES, topic)]
        answers.append(line(item.prompt, CHEAP, topic if topic == "card" else "wrong"))

    def graded_embed(texts: Sequence[str]) -> list[list[float]]:
        """Question k drifts from its topic's pool prompt as k grows (pool prompts have k = 0)."""
        drift = [0.1 * int(t.split()[-1]) if t[-1].isdigit() else 0.0 for t in texts]
        return [[*v[:-1], d] for v, d in zip(topic_embed(texts), drift, strict=True)]

    scored, rivals = rivals_at_strong_share(source, answers, graded_embed, 0.5)

    names = [name for name, _ in rivals]
    assert names[0] == "difficulty router, strong share 0.50" and names[1].startswith("semantic cache at 50% reuse")
    router = rivals[0][1]
    assert {router(f"card question {k}") for k in range(10)} == {CHEAP}  # the cheap tier's wins, ranked easy
    assert scored["transfer question 0"][REUSE] == 1.0 and scored["card question 0"][REUSE] == 0.0

    # A live pass right everywhere but on two card questions.
    answered = [Answered(i.references[0], "strong", 1.0, None) for i in requests]
    answered[0] = answered[1] = Answered("no", "cheap", 1.0, None)
    load = LoadPass("echolm", "Poisson", answered, wall_s=10.0, rate_rps=1.0, arrivals_s=[0.0] * len(requests))
    live = LivePass("echolm", 1.0, load, requests, [STRONG] * len(requests))
    live.quality_by_prompt = {
        i.prompt: float(a.answer == i.references[0]) for i, a in zip(requests, answered, strict=True)
    }

    compare_with_rivals(live, scored, rivals, service_times(answers))

    by_name = {r.policy: r for r in live.rivals}
    versus_router = by_name["difficulty router, strong share 0.50"]
    assert versus_router.requests == 20 and versus_router.difference == pytest.approx(-2 / 20)
    assert versus_router.interval[0] <= -2 / 20 <= versus_router.interval[1]
    # The semantic cache at half reuse reuses for the nearest ten (questions 0-4 of each topic), wrong on
    # five card questions: 15 of 20 against the pass's 18.
    versus_cache = by_name[names[1]]
    assert versus_cache.difference == pytest.approx((18 - 15) / 20)
    # Both send half to the strong server, which bounds the fixed split alike; on two shared slots the
    # cache's reuse is free and the router's cheap half is not.
    assert versus_cache.ceiling.fixed_split == versus_router.ceiling.fixed_split == pytest.approx(1.0)
    assert (versus_cache.ceiling.elastic, versus_router.ceiling.elastic) == (pytest.approx(2.0), pytest.approx(1.0))


def test_the_shipped_reuse_models_reliability_is_read_on_the_requests_by_metric_or_by_verdict() -> None:
    from echolm_lab.bench.table_build import TableWorkload
    from echolm_lab.bench.table_reuse import shipped_reuse_reliability
    from echolm_lab.bench.workloads import Workload
    from echolm_lab.datasets import QARecord

    workload = Workload(
        name="w", items=[], system_prompt=None, metric="exact_match",
        score=lambda answer, item: float(answer == item.references[0]), max_tokens=8,
    )  # fmt: skip
    requests = [QARecord(f"card question {k}", ("card",)) for k in range(6)]
    requests += [QARecord(f"transfer question {k}", ("transfer",)) for k in range(4)]
    source = TableWorkload(workload, [], requests)
    pool = {"card pool": "card", "transfer pool": "wrong"}  # reuse right on cards, wrong on transfers
    strong = {item.prompt: item.references[0] for item in requests[:-1]}  # the last has no strong answer

    calibrated = shipped_reuse_reliability(source, pool, strong, topic_embed)

    assert calibrated is not None and calibrated.n == 9
    assert calibrated.base_rate == pytest.approx(6 / 9)
    assert sum(n for _, _, n in calibrated.bins) == 9

    judged_workload = Workload(name="chat", items=[], system_prompt=None, metric="judged", score=None, max_tokens=8)
    judged_source = TableWorkload(judged_workload, [], requests)
    verdicts = {item.prompt: {STRONG: 0.5, REUSE: 1.0 if k < 2 else 0.0} for k, item in enumerate(requests)}
    by_verdict = shipped_reuse_reliability(judged_source, pool, strong, topic_embed, verdicts)
    assert by_verdict is not None and by_verdict.n == 9 and by_verdict.base_rate == pytest.approx(2 / 9)
    assert shipped_reuse_reliability(judged_source, pool, strong, topic_embed) is None  # no verdict: no label
