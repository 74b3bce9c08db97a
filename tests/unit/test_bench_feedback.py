"""The bench's users' feedback: which answers are scored, what is sent, and what is counted."""

from __future__ import annotations

import json

import httpx

from echolm_lab.bench.feedback import FeedbackSender, chosen_for_feedback
from echolm_lab.bench.load import open_loop
from echolm_lab.bench.systems import Answered
from echolm_lab.bench.workloads import Workload
from echolm_lab.datasets import QARecord


def exact(answer: str, item: QARecord) -> float:
    return float(answer == item.references[0])


WORKLOAD = Workload("w", [], None, "exact_match", exact, 8)


def test_the_scored_share_is_drawn_from_the_prompt_the_same_every_pass() -> None:
    prompts = [f"question {i}" for i in range(2000)]
    chosen = [p for p in prompts if chosen_for_feedback(p, 0.2, seed=7)]

    assert 340 <= len(chosen) <= 460  # 0.2 of 2,000: 400, within 3 standard deviations (18)
    assert chosen == [p for p in prompts if chosen_for_feedback(p, 0.2, seed=7)]
    assert chosen != [p for p in prompts if chosen_for_feedback(p, 0.2, seed=8)]
    assert not any(chosen_for_feedback(p, 0.0, seed=7) for p in prompts)
    assert all(chosen_for_feedback(p, 1.0, seed=7) for p in prompts)


def test_each_scored_answer_is_posted_with_its_request_id_and_the_metrics_score() -> None:
    posted: list[dict[str, object]] = []

    def proxy(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/echolm/feedback"
        assert request.headers["authorization"] == "Bearer sk-test"
        body = json.loads(request.content)
        posted.append(body)
        return httpx.Response(404 if body["request_id"] == "passed-through" else 200)

    sender = FeedbackSender("http://proxy", "sk-test", exact, 1.0, 7, transport=httpx.MockTransport(proxy))
    item = QARecord("What is 2+2?", ("4",))
    sender(item, Answered("4", "cheap", 1.0, 0.5, request_id="right"))
    sender(item, Answered("5", "cheap", 1.0, 0.5, request_id="wrong"))
    sender(item, Answered("4", "strong", 1.0, 0.5, request_id="passed-through"))
    sender(item, Answered("", "cheap", 1.0, None, error="timeout", request_id="failed"))  # no answer to score
    sender(item, Answered("4", "strong", 1.0, 0.5))  # no decision kept: nothing to name

    assert posted == [
        {"request_id": "right", "score": 1.0},
        {"request_id": "wrong", "score": 0.0},
        {"request_id": "passed-through", "score": 1.0},
    ]
    assert (sender.counts.sent, sender.counts.recorded, sender.counts.refused) == (3, 2, {404: 1})
    assert sender.counts.describe() == "2 of 3 scores recorded (mean 0.50); 1 answered 404; 0 failed"


def test_a_proxy_that_cannot_be_reached_is_counted_not_raised() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    sender = FeedbackSender("http://proxy", "k", exact, 1.0, 7, transport=httpx.MockTransport(down))
    sender(QARecord("q", ("a",)), Answered("a", "cheap", 1.0, 0.5, request_id="r"))
    assert (sender.counts.sent, sender.counts.failed, sender.counts.recorded) == (1, 1, 0)


class Echo:
    name = "echo"

    def answer(self, messages: list[dict[str, str]], max_tokens: int) -> Answered:
        return Answered(messages[-1]["content"], "cheap", 0.0, 0.0, request_id=f"id-{messages[-1]['content']}")


def test_an_open_loop_hands_each_request_and_its_answer_to_after_answer() -> None:
    items = [QARecord(f"q{i}", (f"q{i}",)) for i in range(10)]
    seen: list[tuple[str, str | None]] = []
    open_loop(
        Echo(),
        WORKLOAD,
        items,
        rate_rps=200.0,
        seed=1,
        label="t",
        after_answer=lambda i, a: seen.append((i.prompt, a.request_id)),
    )
    assert sorted(seen) == sorted((f"q{i}", f"id-q{i}") for i in range(10))
