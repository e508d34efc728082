"""The run engine on the memory control plane: streaming, outputs, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Sequence

import pytest

from kern.agent import Agent
from kern.context import RunContext
from kern.control.memory import MemoryControlPlane
from kern.exceptions import ConfigError, InvalidRunId, RunIdInUse
from kern.models.base import Message, Model, ModelDelta, TextDelta, ToolSpec
from kern.models.offline import OfflineModel, ScriptedCall
from kern.run.agent import RunEvent, RunOutputEvent
from kern.run.base import RunStatus


@pytest.fixture
def control() -> MemoryControlPlane:
    return MemoryControlPlane()


def make_agent(control: MemoryControlPlane, **model_args: object) -> Agent:
    return Agent(name="Story Writer", model=OfflineModel(**model_args), control=control)  # type: ignore[arg-type]


def stream_with_cancel(
    agent: Agent, after_events: int = 5, prompt: str = "story"
) -> tuple[list[RunOutputEvent], list[bool], float]:
    """Stream a run; once ``after_events`` events arrived, cancel it from another thread."""
    events: list[RunOutputEvent] = []
    answers: list[bool] = []
    cancelled_at = 0.0
    for event in agent.run(prompt, stream=True):
        events.append(event)
        if len(events) == after_events:
            thread = threading.Thread(
                target=lambda run_id=event.run_id: answers.append(agent.cancel_run(run_id))
            )
            cancelled_at = time.monotonic()
            thread.start()
            thread.join()
    return events, answers, time.monotonic() - cancelled_at


def assert_one_terminal(events: Sequence[RunOutputEvent]) -> None:
    assert events[0].event == RunEvent.run_started
    terminals = [e for e in events if e.is_terminal]
    assert len(terminals) == 1
    assert events[-1] is terminals[0]
    for event in events:
        if event.event == RunEvent.run_content:
            assert isinstance(event.content, str) and event.content


def test_agent_id_is_a_slug_of_the_name(control: MemoryControlPlane) -> None:
    assert make_agent(control).id == "story-writer"
    assert Agent(name="x", model=OfflineModel(), id="mine", control=control).id == "mine"


def test_agent_without_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        Agent(name="no model")


def test_run_returns_output_with_content_and_metrics(control: MemoryControlPlane) -> None:
    agent = make_agent(control, text="one two three")
    output = agent.run("hi", run_id="my-run-1")
    assert output.run_id == "my-run-1"
    assert output.status == RunStatus.completed
    assert output.content == "one two three"
    assert output.metrics.output_tokens == 3
    assert output.metrics.duration is not None and output.metrics.duration >= 0
    assert control.get("my-run-1").status == RunStatus.completed  # type: ignore[union-attr]


def test_stream_sends_started_content_and_one_terminal(control: MemoryControlPlane) -> None:
    agent = make_agent(control, text="a b c d e")
    events = list(agent.run("hi", stream=True))
    assert_one_terminal(events)
    assert [e.event for e in events[1:-1]] == [RunEvent.run_content] * 5
    final = events[-1]
    assert final.event == RunEvent.run_completed
    assert final.status == RunStatus.completed
    assert final.content == "a b c d e"
    assert {e.run_id for e in events} == {final.run_id}


def test_reused_or_invalid_run_id_is_refused(control: MemoryControlPlane) -> None:
    agent = make_agent(control, text="x")
    agent.run("hi", run_id="same")
    with pytest.raises(RunIdInUse):
        agent.run("hi", run_id="same")
    with pytest.raises(RunIdInUse):
        list(agent.run("hi", run_id="same", stream=True))
    for bad in ["", "a*b", "a b", "x\n", "{tag}", "?"]:
        with pytest.raises(InvalidRunId):
            agent.run("hi", run_id=bad)


def test_cancel_mid_stream_keeps_partial_content(control: MemoryControlPlane) -> None:
    agent = make_agent(control, chunk_delay=0.005)
    events, answers, _ = stream_with_cancel(agent, after_events=20)
    assert answers == [True]
    assert_one_terminal(events)
    final = events[-1]
    assert final.event == RunEvent.run_cancelled
    assert final.status == RunStatus.cancelled
    streamed = "".join(e.content for e in events if e.event == RunEvent.run_content)
    assert final.content == streamed
    assert 0 < len(final.content) < len(agent.model.text)  # type: ignore[attr-defined]
    record = control.get(final.run_id)
    assert record is not None and record.status == RunStatus.cancelled
    assert record.content == final.content and record.stopped


def test_cancel_while_model_is_silent_ends_promptly(control: MemoryControlPlane) -> None:
    agent = make_agent(control, first_token_delay=30)
    events, answers, took = stream_with_cancel(agent, after_events=1)
    assert answers == [True]
    assert events[-1].event == RunEvent.run_cancelled
    assert events[-1].content == ""
    assert took < 5  # generous: the stall is 30 s


def test_cancel_after_completion_unknown_twice_and_other_agent(
    control: MemoryControlPlane,
) -> None:
    agent = make_agent(control, text="short")
    other = Agent(name="other", model=OfflineModel(first_token_delay=30), control=control)
    done = agent.run("hi")
    assert agent.cancel_run(done.run_id) is False
    assert control.get(done.run_id).status == RunStatus.completed  # type: ignore[union-attr]
    assert agent.cancel_run("no-such-run") is False

    stream = other.run("hi", stream=True)
    started = next(stream)
    assert agent.cancel_run(started.run_id) is False  # not this agent's run
    assert other.cancel_run(started.run_id) is True
    assert other.cancel_run(started.run_id) is False  # harmless repeat
    rest = list(stream)
    assert [e.event for e in rest] == [RunEvent.run_cancelled]


def test_sync_tool_is_abandoned_and_run_ends_cancelled(control: MemoryControlPlane) -> None:
    released = threading.Event()

    def slow_lookup(query: str) -> str:
        """Look something up, slowly and deaf to cancels."""
        released.wait(10)
        return "found"

    agent = Agent(
        name="tooly",
        model=OfflineModel(
            text="after {tool_output}", tool_calls=[_call("slow_lookup", query="dragons")]
        ),
        tools=[slow_lookup],
        control=control,
    )
    events: list[RunOutputEvent] = []
    took = 0.0
    for event in agent.run("go", stream=True):
        events.append(event)
        if event.event == RunEvent.tool_call_started:
            t0 = time.monotonic()
            assert agent.cancel_run(event.run_id)
    took = time.monotonic() - t0
    released.set()
    assert events[-1].event == RunEvent.run_cancelled
    assert took < 5
    assert RunEvent.tool_call_completed not in [e.event for e in events]


def test_polling_sync_tool_and_async_tool_stop_on_cancel(control: MemoryControlPlane) -> None:
    noticed: list[bool] = []

    def poller(ctx: RunContext) -> str:
        """Wait until cancelled."""
        noticed.append(ctx.wait_cancelled(10))
        return "stopped"

    async def sleeper(seconds: float = 30) -> str:
        """Sleep asynchronously."""
        await asyncio.sleep(seconds)
        return "woke"

    for name, tool in (("poller", poller), ("sleeper", sleeper)):
        agent = Agent(
            name=name,
            model=OfflineModel(text="x", tool_calls=[_call(name)]),
            tools=[tool],
            control=control,
        )
        events = []
        for event in agent.run("go", stream=True):
            events.append(event)
            if event.event == RunEvent.tool_call_started:
                assert agent.cancel_run(event.run_id)
        assert events[-1].event == RunEvent.run_cancelled, name
    deadline = time.monotonic() + 5
    while not noticed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert noticed == [True]


def test_tools_run_and_emit_events(control: MemoryControlPlane) -> None:
    def add(a: int, b: int) -> int:
        """Add two numbers.

        Args:
            a: The first number.
            b: The second number.
        """
        return a + b

    async def fail() -> str:
        """Always fails."""
        raise RuntimeError("boom")

    agent = Agent(
        name="calc",
        model=OfflineModel(
            text="result {tool_output}", tool_calls=[_call("add", a=2, b=3), _call("fail")]
        ),
        tools=[add, fail],
        control=control,
    )
    spec = agent.tools[0].spec
    assert spec.description == "Add two numbers."
    assert spec.parameters["required"] == ["a", "b"]
    assert spec.parameters["properties"]["a"]["description"] == "The first number."
    events = list(agent.run("2+3", stream=True))
    kinds = [e.event for e in events]
    assert kinds.count(RunEvent.tool_call_started) == 2
    done = [e for e in events if e.event == RunEvent.tool_call_completed]
    assert done[0].tool.result == "5" and done[0].tool.tool_args == {"a": 2, "b": 3}
    assert done[1].tool.error is not None and "boom" in done[1].tool.error
    assert events[-1].event == RunEvent.run_completed
    assert events[-1].content == "result Error: RuntimeError: boom"
    output = agent.run("again")
    assert [t.tool_name for t in output.tools] == ["add", "fail"]


class _Broken(Model):
    id = "broken"

    async def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec]
    ) -> AsyncIterator[ModelDelta]:
        yield TextDelta("partial ")
        raise ConnectionError("upstream went away")


def test_model_failure_ends_in_one_error_event_with_content(control: MemoryControlPlane) -> None:
    agent = Agent(name="broken", model=_Broken(), control=control)
    events = list(agent.run("hi", stream=True))
    assert_one_terminal(events)
    final = events[-1]
    assert final.event == RunEvent.run_error and final.status == RunStatus.error
    assert final.content == "partial "
    assert "upstream went away" in final.error  # type: ignore[union-attr]
    assert agent.run("hi").status == RunStatus.error


def test_consumer_that_stops_early_cancels_the_run(control: MemoryControlPlane) -> None:
    agent = make_agent(control, chunk_delay=0.01)
    stream = agent.run("hi", stream=True)
    first = next(stream)
    next(stream)
    stream.close()
    record = control.wait_stopped(first.run_id, timeout=10)
    assert record is not None and record.status == RunStatus.cancelled
    assert record.cancel_reason == "consumer_closed"
    assert len(control.local) == 0


def test_cancel_racing_completion_has_one_winner(control: MemoryControlPlane) -> None:
    agent = make_agent(control, text="w " * 3)
    tries, lost = 1000, 0
    outcomes = {"cancelled": 0, "completed": 0}
    for n in range(tries):
        run_id = f"race-{n}"
        answer: list[bool] = []
        barrier = threading.Barrier(2)

        def cancel(
            run_id: str = run_id, answer: list[bool] = answer, barrier: threading.Barrier = barrier
        ) -> None:
            barrier.wait()
            answer.append(agent.cancel_run(run_id))

        thread = threading.Thread(target=cancel)
        thread.start()
        stream = agent.run("go", run_id=run_id, stream=True)
        first = next(stream)
        barrier.wait()
        final = [e for e in [first, *stream] if e.is_terminal]
        thread.join()
        stored = control.get(run_id)
        assert stored is not None
        won = answer == [True]
        agreed = len(final) == 1 and final[0].status == stored.status
        if not agreed or won != (stored.status == RunStatus.cancelled):
            lost += 1
        outcomes["cancelled" if won else "completed"] += 1
    assert lost == 0, f"{lost} of {tries} races broke the one-winner rule"
    print(f"cancel/complete races: {tries} tried, {lost} lost, outcomes {outcomes}")


def test_two_hundred_concurrent_runs_cancelled_from_other_threads(
    control: MemoryControlPlane,
) -> None:
    agent = make_agent(control, chunk_delay=0.01)
    finals: dict[int, RunOutputEvent] = {}

    def consume(n: int) -> None:
        for event in agent.run("go", stream=True, run_id=f"many-{n}"):
            if event.is_terminal:
                finals[n] = event

    consumers = [threading.Thread(target=consume, args=(n,)) for n in range(200)]
    for thread in consumers:
        thread.start()
    deadline = time.monotonic() + 30
    while len(control.list_runs(status=RunStatus.running)) < 200:
        assert time.monotonic() < deadline, "the runs did not all start"
        time.sleep(0.02)
    time.sleep(0.1)  # let every run stream a little
    answers: list[bool] = []
    cancellers = [
        threading.Thread(target=lambda n=n: answers.append(agent.cancel_run(f"many-{n}")))
        for n in range(200)
    ]
    for thread in cancellers:
        thread.start()
    for thread in cancellers + consumers:
        thread.join(timeout=30)
    assert answers == [True] * 200
    assert len(finals) == 200
    assert all(e.status == RunStatus.cancelled and e.content for e in finals.values())
    assert len(control.local) == 0


def test_ten_thousand_runs_leave_nothing_behind() -> None:
    control = MemoryControlPlane(max_terminal=1000)
    agent = make_agent(control, text="tiny")
    for _ in range(10_000):
        assert agent.run("x").status == RunStatus.completed
    assert len(control.local) == 0
    assert len(control) == 1000  # finished runs are capped (and expire by TTL)


def test_finished_runs_expire() -> None:
    control = MemoryControlPlane(terminal_ttl=0.05)
    agent = make_agent(control, text="tiny")
    output = agent.run("x")
    assert control.get(output.run_id) is not None
    time.sleep(0.1)
    assert control.get(output.run_id) is None


async def test_async_stream_and_async_cancel(control: MemoryControlPlane) -> None:
    agent = make_agent(control, chunk_delay=0.005)
    events = []
    async for event in agent.arun("hi", stream=True):
        events.append(event)
        if len(events) == 10:
            assert await agent.acancel_run(event.run_id) is True
    assert_one_terminal(events)
    assert events[-1].event == RunEvent.run_cancelled
    assert events[-1].content


async def test_async_cancel_during_stall_from_another_task(control: MemoryControlPlane) -> None:
    agent = make_agent(control, first_token_delay=30)
    run = agent.arun("hi", run_id="stalled", stream=False)
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    assert await agent.acancel_run("stalled")
    output = await asyncio.wait_for(run, 5)
    assert time.monotonic() - t0 < 5
    assert output.status == RunStatus.cancelled and output.cancel_reason == "cancelled"


async def test_cancelling_the_callers_task_records_the_run_cancelled(
    control: MemoryControlPlane,
) -> None:
    agent = make_agent(control, first_token_delay=30)
    run = agent.arun("hi", run_id="outside")
    await asyncio.sleep(0.05)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    record = control.get("outside")
    assert record is not None and record.status == RunStatus.cancelled
    assert record.cancel_reason == "caller_cancelled"


async def test_async_consumer_closing_early_cancels(control: MemoryControlPlane) -> None:
    agent = make_agent(control, chunk_delay=0.01)
    stream = agent.arun("hi", stream=True)
    first = await stream.__anext__()
    await stream.aclose()
    record = control.get(first.run_id)
    assert record is not None and record.status == RunStatus.cancelled


def _call(name: str, **arguments: object) -> ScriptedCall:
    return ScriptedCall(name, dict(arguments))
