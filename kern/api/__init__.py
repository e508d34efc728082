"""kern's HTTP API (AgentOS-compatible): ``kern serve APP`` or `create_app(agents)`.

app.py       create_app / app_from_env: the FastAPI app and its lifespan
routes/      runs (start, cancel, read, follow), agents, health
dispatch.py  Dispatcher: who executes accepted runs (inline now, queue later)
feeds.py     live fan-out of the runs executing in this process
events.py    following a run: its local feed, else the control plane's log
sse.py       server-sent events, written and read
body.py      the run request body, form or JSON
schemas.py   request and response models
auth.py      the bearer key; limits.py the body limit; errors.py errors as JSON
settings.py  ApiSettings, from code or the environment
"""

from kern.api.app import app_from_env, create_app
from kern.api.dispatch import Dispatcher, InlineDispatcher
from kern.api.settings import ApiSettings

__all__ = ["ApiSettings", "Dispatcher", "InlineDispatcher", "app_from_env", "create_app"]
