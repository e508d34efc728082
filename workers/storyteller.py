"""The storyteller deployment: one agent that writes long stories.

Served by ``kern worker workers.storyteller:agents`` and
``kern serve workers.storyteller:agents --dispatch queue`` (see docker-compose.yml).
It uses the OpenAI Responses API when ``OPENAI_API_KEY`` is set (model from
``KERN_STORY_MODEL``, default gpt-5.2; ``OPENAI_BASE_URL`` for any compatible
server), else kern's offline storyteller, so the deployment runs with no key.
"""

from __future__ import annotations

import os

from kern.agent import Agent
from kern.models.base import Model
from kern.models.offline import OfflineModel


def _model() -> Model:
    if os.environ.get("OPENAI_API_KEY"):
        from kern.models.openai import OpenAIResponses

        return OpenAIResponses(id=os.environ.get("KERN_STORY_MODEL", "gpt-5.2"))
    delay = float(os.environ.get("KERN_OFFLINE_CHUNK_DELAY", "0.05"))
    return OfflineModel(chunk_delay=delay, id="offline-storyteller")


story_writer = Agent(
    name="Story Writer Agent",
    model=_model(),
    description="An agent that writes detailed stories",
    instructions="Write long, vivid stories with dialogue.",
)

agents = [story_writer]
