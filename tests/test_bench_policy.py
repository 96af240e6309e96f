"""bench.policy's plan and arithmetic (the benchmark itself is run by hand: it times things)."""

from __future__ import annotations

from collections import Counter

from bench.policy import Samples, busiest, due_spans, plan, windows_while_due


def test_a_third_of_the_calls_are_busy_first_and_a_twentieth_share_numbers() -> None:
    the_plan = plan(1200, [3, 6])

    numbers = Counter(call["from"] for call in the_plan.calls)
    assert len(the_plan.calls) == 1200
    assert the_plan.busy_first == 400
    busy_first = sum(n for number, n in numbers.items() if number.endswith("2")) + sum(
        1 for outcomes in the_plan.outcomes.values() if outcomes == ["busy"]
    )
    assert busy_first == 400
    assert sorted(n for n in numbers.values() if n > 1) == [20, 20, 20]
    assert {call["retry"]["max_attempts"] for call in the_plan.calls} == {2, 3}


def test_busiest_counts_a_half_open_period() -> None:
    assert busiest([0.0, 1.0, 5.9, 6.0, 6.5], 6.0) == 4  # 1.0 to 6.5
    assert busiest([0.0, 6.0, 12.0], 6.0) == 1


def test_only_windows_inside_a_span_of_due_calls_count() -> None:
    samples = Samples(at=[0, 1, 2, 3, 4, 5, 6, 7], due=[0, 5, 5, 5, 5, 5, 0, 0], open=[1] * 8)
    assert due_spans(samples) == [(1, 5)]
    requests = [1.0, 1.5, 2.0, 3.1, 3.5, 7.0]
    # From the first request: [1, 3) and [3, 5) lie inside; [5, 7) does not.
    assert windows_while_due(requests, due_spans(samples), 2.0) == [3, 2]
