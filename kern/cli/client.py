"""``kern run AGENT_ID MESSAGE``: start a run on a kern API and stream it here.

The run id is chosen here and printed first, so Ctrl-C can cancel the run
even before the server answered. Ctrl-C (SIGINT) sends the cancel, waits for
the server to stop the run, and prints its final status and the content it
kept. Exit codes: 0 completed, 1 the run ended CANCELLED or ERROR on its own,
2 usage or connection error, 130 interrupted (the run was cancelled).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Annotated

import httpx
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from kern.api.settings import DEFAULT_PORT, ENV_SECURITY_KEY
from kern.api.sse import iter_sse
from kern.ids import new_run_id
from kern.run.agent import (
    RunContentEvent,
    RunOutputEvent,
    RunStartedEvent,
    ToolCallStartedEvent,
    event_from_json,
)
from kern.run.base import RunStatus

DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
EXIT_INTERRUPTED = 130
CANCEL_RETRY_SECONDS = 2.0
"""How long a cancel answered 404 is retried: the server may not have stored the run yet."""
CANCEL_RETRY_INTERVAL = 0.1


class ApiFailure(Exception):
    """The API answered with an error, or could not be reached."""


def run(
    agent_id: Annotated[str, typer.Argument(help="The agent's id (see GET /agents).")],
    message: Annotated[str, typer.Argument(help="The input for the run.")],
    url: Annotated[
        str, typer.Option(help="The kern API's base URL.", envvar="KERN_API_URL")
    ] = DEFAULT_URL,
    session_id: Annotated[str | None, typer.Option(help="Session id for the run.")] = None,
    cancel_wait: Annotated[
        float, typer.Option(help="Seconds Ctrl-C waits for the run to stop.", min=0, max=30)
    ] = 10.0,
) -> None:
    """Start a run and stream it to the terminal; Ctrl-C cancels that run."""
    run_id = new_run_id()
    screen = Screen(Console(highlight=False))
    screen.begin(run_id)
    key = os.environ.get(ENV_SECURITY_KEY)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    timeout = httpx.Timeout(10.0, read=None)  # a run may be silent for a long while
    with httpx.Client(base_url=url, headers=headers, timeout=timeout) as client:
        try:
            status = _stream(client, agent_id, message, run_id, session_id, screen)
        except KeyboardInterrupt:
            screen.end()
            _cancel(client, agent_id, run_id, cancel_wait, screen)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except ApiFailure as exc:
            screen.end()
            screen.error(str(exc))
            raise typer.Exit(2) from None
    screen.end()
    screen.note(f"status: {status.value}")
    raise typer.Exit(0 if status == RunStatus.completed else 1)


def _stream(
    client: httpx.Client,
    agent_id: str,
    message: str,
    run_id: str,
    session_id: str | None,
    screen: Screen,
) -> RunStatus:
    form = {"message": message, "stream": "true", "run_id": run_id}
    if session_id:
        form["session_id"] = session_id
    try:
        with client.stream("POST", f"/agents/{agent_id}/runs", data=form) as response:
            if response.status_code != 200:
                response.read()
                raise ApiFailure(_describe(response))
            for item in iter_sse(response.iter_lines()):
                event = event_from_json(item.data)
                screen.show(event)
                if event.is_terminal:
                    return RunStatus(getattr(event, "status", RunStatus.error))
    except httpx.HTTPError as exc:
        raise ApiFailure(f"{client.base_url}: {type(exc).__name__}: {exc}") from None
    raise ApiFailure("the stream ended before the run did")


def _cancel(client: httpx.Client, agent_id: str, run_id: str, wait: float, screen: Screen) -> None:
    screen.note(f"cancelling run {run_id} ...")
    # The run id was chosen here, so a Ctrl-C can come before the server stored the run:
    # a 404 is tried again for a moment, else the run would start (and finish) unseen.
    deadline = time.monotonic() + CANCEL_RETRY_SECONDS
    try:
        while True:
            response = client.post(
                f"/agents/{agent_id}/runs/{run_id}/cancel",
                params={"wait": wait},
                timeout=wait + 10,
            )
            if response.status_code != 404 or time.monotonic() >= deadline:
                break
            time.sleep(CANCEL_RETRY_INTERVAL)
    except (httpx.HTTPError, KeyboardInterrupt) as exc:
        screen.error(f"the cancel was not confirmed: {type(exc).__name__}: {exc}")
        return
    if response.status_code == 404:
        screen.note("the server has no such run (it had not started)")
        return
    body = response.json() if response.headers.get("content-type") == "application/json" else {}
    if response.status_code not in (200, 409):
        screen.error(f"the cancel failed: {_describe(response)}")
        return
    screen.note(f"status: {body.get('status')}")
    content = body.get("content")
    if isinstance(content, str):
        screen.note(f"partial content ({len(content)} characters):")
        screen.raw(content + "\n")


def _describe(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text[:200]
    return f"HTTP {response.status_code}: {detail}"


class Screen:
    """What the terminal shows: streamed text, and below it a live status line.

    On a terminal the status line is redrawn in place (rich ``Live``) and the
    text is printed above it a whole line at a time. Elsewhere (a pipe, a file)
    the text goes out as it comes and the status only at the end.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live: Live | None = None
        self.status = RunStatus.pending.value
        self.chars = 0
        self.started = time.monotonic()
        self._line = ""

    def begin(self, run_id: str) -> None:
        self.note(f"run id: {run_id}")
        if self.console.is_terminal:
            self.live = Live(
                self._render(), console=self.console, refresh_per_second=8, transient=True
            )
            self.live.start()

    def show(self, event: RunOutputEvent) -> None:
        if isinstance(event, RunStartedEvent):
            self.status = RunStatus.running.value
        elif isinstance(event, RunContentEvent):
            self.chars += len(event.content)
            self._write(event.content)
        elif isinstance(event, ToolCallStartedEvent):
            self._write(f"\n[tool {event.tool.tool_name}]\n")
        elif event.is_terminal:
            self.status = str(getattr(event, "status", "ERROR"))
        if self.live is not None:
            self.live.update(self._render())

    def end(self) -> None:
        """Stop the live line; what is left of the text is printed."""
        if self.live is not None:
            self.live.stop()
            self.live = None
            if self._line:
                self.console.print(self._line, markup=False)
                self._line = ""
        else:
            self.raw("\n")

    def note(self, text: str) -> None:
        self.console.print(text, markup=False)

    def error(self, text: str) -> None:
        Console(stderr=True).print(f"error: {text}", markup=False, style="red")

    def raw(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def _write(self, text: str) -> None:
        if self.live is None:
            self.raw(text)
            return
        self._line += text
        width = max(self.console.width, 20)
        while "\n" in self._line or len(self._line) > width:
            cut = self._line.find("\n")
            if cut < 0 or cut > width:
                cut = self._line.rfind(" ", 0, width)
                cut = width if cut <= 0 else cut
            head, self._line = self._line[:cut], self._line[cut:].removeprefix("\n").lstrip(" ")
            self.live.console.print(head, markup=False)

    def _render(self) -> Group:
        elapsed = time.monotonic() - self.started
        line = f"● {self.status} · {self.chars} chars · {elapsed:.1f}s · Ctrl-C cancels"
        return Group(Text(self._line), Text(line, style="dim"))
