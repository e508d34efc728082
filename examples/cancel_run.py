"""Cancel a streaming run from another thread.

Thread 1 streams a long story; thread 2 cancels the run after 8 seconds. The
run stops at once, the model's HTTP stream is closed, and the partial story is
kept.

The model is reached through the openai SDK's usual settings:
``OPENAI_API_KEY`` and, for any OpenAI-compatible server, ``OPENAI_BASE_URL``.
No key at hand? Serve kern's local test server and point the SDK at it:

    python -m kern.testing.openai_server --port 8000 --chunk-delay 0.05 &
    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=local python examples/cancel_run.py
"""

import threading
import time

from kern.agent import Agent
from kern.models.openai import OpenAIResponses
from kern.run.agent import RunEvent
from kern.run.base import RunStatus


def stream_story(agent: Agent, shared: dict) -> None:
    """Stream the story, remembering the run id and how the run ended."""
    pieces = []
    final = None
    for chunk in agent.run(
        "Write a very long story about a dragon who learns to code. "
        "Make it at least 2000 words with detailed descriptions and dialogue.",
        stream=True,
    ):
        shared.setdefault("run_id", chunk.run_id)
        if chunk.event == RunEvent.run_content:
            print(chunk.content, end="", flush=True)
            pieces.append(chunk.content)
        elif chunk.event == RunEvent.run_cancelled:
            shared["result"] = {
                "status": "cancelled",
                "run_id": chunk.run_id,
                "content": chunk.content,
            }
            return
        elif getattr(chunk, "status", None) == RunStatus.completed:
            final = chunk
    if final is not None:
        shared["result"] = {
            "status": final.status.value.lower(),
            "run_id": final.run_id,
            "content": "".join(pieces),
        }


def cancel_later(agent: Agent, shared: dict, delay: float) -> None:
    """Wait, then cancel the run from this other thread."""
    time.sleep(delay)
    run_id = shared.get("run_id")
    if run_id is None:
        print("\n[WARNING] no run id yet: nothing to cancel")
        return
    print(f"\n[CANCEL] cancelling run {run_id}")
    shared["cancel_returned"] = agent.cancel_run(run_id)


def main() -> None:
    agent = Agent(
        name="StorytellerAgent",
        model=OpenAIResponses(id="gpt-5.2"),
        description="An agent that writes detailed stories",
    )
    shared: dict = {}
    runner = threading.Thread(target=stream_story, args=(agent, shared), name="AgentRun")
    canceller = threading.Thread(target=cancel_later, args=(agent, shared, 8), name="Cancel")
    runner.start()
    canceller.start()
    runner.join()
    canceller.join()

    print("\n" + "=" * 50)
    result = shared.get("result")
    if result is None:
        print("[ERROR] the run produced no result")
        raise SystemExit(1)
    content = result["content"]
    preview = content[:200] + "..." if content else "No content before cancellation"
    print(f"Status: {result['status']}")
    print(f"Run ID: {result['run_id']}")
    print(f"cancel_run returned: {shared.get('cancel_returned')}")
    print(f"Content Preview: {preview}")
    if result["status"] == "cancelled":
        print("\nSUCCESS: Run was successfully cancelled!")
    else:
        print("\n[WARNING] Run completed before cancellation")


if __name__ == "__main__":
    main()
