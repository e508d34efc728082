"""The cancellation demo: stream a story in one thread, cancel it from another."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import TextIO

from kern.agent import Agent
from kern.models.base import Model
from kern.models.offline import OfflineModel
from kern.run.agent import (
    RunCancelledEvent,
    RunCompletedEvent,
    RunContentEvent,
    RunErrorEvent,
    RunStartedEvent,
)
from kern.run.base import RunStatus

PROMPT = (
    "Write a very long story about a dragon who learns to code. "
    "Make it at least 2000 words with detailed descriptions and dialogue."
)


@dataclass
class DemoResult:
    run_id: str | None = None
    status: RunStatus | None = None
    content: str = ""
    cancel_returned: bool | None = None
    events: list[str] = field(default_factory=list)


def demo_model() -> Model:
    """OpenAIResponses when an API key is set, else the offline storyteller."""
    if os.environ.get("OPENAI_API_KEY"):
        from kern.models.openai import OpenAIResponses

        return OpenAIResponses(id=os.environ.get("KERN_DEMO_MODEL", "gpt-5.2"))
    return OfflineModel(chunk_delay=0.03, id="offline-storyteller")


def run_demo(cancel_after: float, out: TextIO, model: Model | None = None) -> DemoResult:
    """Stream a story and cancel it ``cancel_after`` seconds after it started."""
    agent = Agent(
        name="StorytellerAgent",
        model=model or demo_model(),
        description="An agent that writes detailed stories",
    )
    result = DemoResult()
    started = threading.Event()

    def cancel_later() -> None:
        started.wait()
        threading.Event().wait(cancel_after)
        assert result.run_id is not None
        result.cancel_returned = agent.cancel_run(result.run_id)

    canceller = threading.Thread(target=cancel_later, name="canceller", daemon=True)
    canceller.start()
    for event in agent.run(PROMPT, stream=True):
        result.events.append(event.event.value)
        if isinstance(event, RunStartedEvent):
            result.run_id = event.run_id
            started.set()
        elif isinstance(event, RunContentEvent):
            out.write(event.content)
            out.flush()
        elif isinstance(event, RunCompletedEvent | RunCancelledEvent | RunErrorEvent):
            result.status = event.status
            result.content = event.content
    started.set()
    canceller.join(timeout=cancel_after + 5)
    return result
