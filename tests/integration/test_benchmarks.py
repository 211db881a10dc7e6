"""Each benchmark an operator runs, in a configuration of seconds, so that none can rot."""

from __future__ import annotations

from pathlib import Path

from benchmarks import handoff


def test_handoff_the_self_model_with_its_token_keeps_every_fact_current(tmp_path: Path) -> None:
    args = handoff.parse_args(
        ["--journeys", "2", "--handoffs", "4", "--facts", "12", "--report-at", "1,4",
         "--window", "400", "--summary-k", "3", "--data", str(tmp_path), "--quiet"]
    )  # fmt: skip
    report = handoff.run(args)
    table = handoff.render(report, args)
    print(table)
    assert report.token_strategy_whole, table
    assert all(t.asked > 0 for t in report.tallies["selfmodel+token"].values())
    # The simulated strategies lose what their stated rules drop: by the 4th handoff a
    # 400-token window and a 3-fact summary cannot hold 9 facts.
    assert report.tally("summary", 4).retained <= 3 * 2
    assert report.tally("transcript", 4).retained < report.tally("transcript", 4).asked
    assert report.tally("none", 4).retained == 0


def test_a_transcript_keeps_the_last_whole_turns_that_fit_its_window() -> None:
    first, second = handoff.Statement(0, 0, 0.8), handoff.Statement(0, 1, 0.9)
    turns = [handoff.Turn(20, first), handoff.Turn(60), handoff.Turn(20, second)]
    assert handoff.truncated(turns, 80) == turns[1:]
    assert handoff.known_from_turns(handoff.truncated(turns, 80)) == {0: 1}
    assert handoff.known_from_turns(turns) == {0: 1}
    assert handoff.truncated(turns, 19) == []


def test_a_summary_restates_the_most_recently_mentioned_facts() -> None:
    known, recency = {1: 0, 2: 1, 3: 0}, {1: 5, 2: 9, 3: 1}
    assert handoff.summary(known, recency, 2) == {2: 1, 1: 0}
