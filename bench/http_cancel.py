"""Cancel over HTTP: ``POST .../cancel`` -> ``RunCancelled`` on the run's open SSE stream.

A ``kern serve`` process (its own CPU time) streams ``--streams`` runs at once,
each to its own connection, one word every 20 ms. Once all stream, the runs
are cancelled one by one from another client while the rest keep streaming
(``sequential``), then a fresh set is cancelled all at once (``burst``). The
latency is from sending the cancel to reading the RunCancelled event on the
run's stream. Last, the cancel route's rate: repeat cancels (200, idempotent)
from ``--concurrency`` requests in flight for ``--seconds``.

    python bench/http_cancel.py --streams 100
    KERN_REDIS_URL=redis://127.0.0.1:6379/0 python bench/http_cancel.py --streams 100
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx
from _common import summary_ms
from http_server import kern_serve

from kern.api.sse import SseParser


class Stream:
    """One open run stream: its id, when content flowed, when it ended and how."""

    def __init__(self) -> None:
        self.run_id = ""
        self.streaming = asyncio.Event()
        self.ended = asyncio.Event()
        self.end_event = ""
        self.ended_at = 0.0


async def open_stream(client: httpx.AsyncClient, stream: Stream) -> None:
    parser = SseParser()
    contents = 0
    async with client.stream("POST", "/agents/stream/runs", data={"message": "go"}) as response:
        stream.run_id = response.headers["x-run-id"]
        async for line in response.aiter_lines():
            message = parser.feed(line)
            if message is None:
                continue
            if message.event == "RunContent":
                contents += 1
                if contents == 5:
                    stream.streaming.set()
            elif message.event in ("RunCancelled", "RunCompleted", "RunError"):
                stream.ended_at = time.perf_counter()
                stream.end_event = message.event
                stream.ended.set()
                return


async def start_streams(
    client: httpx.AsyncClient, count: int
) -> tuple[list[Stream], list[asyncio.Task[None]]]:
    streams = [Stream() for _ in range(count)]
    tasks = [asyncio.create_task(open_stream(client, s)) for s in streams]
    await asyncio.gather(*(s.streaming.wait() for s in streams))
    return streams, tasks


class RawConnection:
    """A bare keep-alive HTTP/1.1 connection: far less client CPU per request than httpx."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> RawConnection:
        host, port = url.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    async def post(self, path: str) -> int:
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\n\r\n".encode()
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await self.reader.readexactly(length)
        return int(head.split(b" ", 2)[1])

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def cancel(client: httpx.AsyncClient, run_id: str) -> None:
    response = await client.post(f"/agents/stream/runs/{run_id}/cancel")
    assert response.status_code == 200, response.text


async def sequential(url: str, count: int) -> tuple[list[float], list[float]]:
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10)
    async with (
        httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as streams_client,
        httpx.AsyncClient(base_url=url, timeout=60) as control,
    ):
        streams, tasks = await start_streams(streams_client, count)
        latencies, round_trips = [], []
        for stream in streams:
            sent = time.perf_counter()
            await cancel(control, stream.run_id)
            round_trips.append(time.perf_counter() - sent)
            await stream.ended.wait()
            assert stream.end_event == "RunCancelled", stream.end_event
            latencies.append(stream.ended_at - sent)
        await asyncio.gather(*tasks)
    return latencies, round_trips


async def burst(url: str, count: int) -> list[float]:
    """All cancels sent at once, on connections opened beforehand; latency from the first send."""
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        streams, tasks = await start_streams(client, count)
        connections = [await RawConnection.open(url) for _ in streams]
        sent = time.perf_counter()
        paths = [f"/agents/stream/runs/{s.run_id}/cancel" for s in streams]
        codes = await asyncio.gather(*(c.post(p) for c, p in zip(connections, paths, strict=True)))
        assert set(codes) == {200}, codes
        await asyncio.gather(*(s.ended.wait() for s in streams))
        await asyncio.gather(*tasks)
        for connection in connections:
            await connection.close()
    return [s.ended_at - sent for s in streams]


async def cancel_rate(url: str, seconds: float, concurrency: int, *, raw: bool) -> float:
    """Repeat cancels of one cancelled run (each answers 200) for ``seconds``."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        form = {"message": "go", "background": "true"}
        run_id = (await client.post("/agents/stream/runs", data=form)).json()["run_id"]
        await cancel(client, run_id)
        path = f"/agents/stream/runs/{run_id}/cancel"
        connections = [await RawConnection.open(url) for _ in range(concurrency)] if raw else []
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker(n: int) -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                if raw:
                    assert await connections[n].post(path) == 200
                else:
                    await cancel(client, run_id)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        elapsed = time.perf_counter() - started
        for connection in connections:
            await connection.close()
        return done / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with kern_serve() as url:
        latencies, round_trips = await sequential(url, args.streams)
        print(f"sequential cancel, {args.streams} streams open: {summary_ms(latencies)}")
        print(f"  POST cancel round trip:                {summary_ms(round_trips)}")
        latencies = await burst(url, args.streams)
        print(f"burst: {args.streams} cancels at once:        {summary_ms(latencies)}")
        rate = await cancel_rate(url, args.seconds, args.concurrency, raw=False)
        print(f"cancel route: {rate:.0f} requests/s ({args.concurrency} in flight, httpx client)")
        rate = await cancel_rate(url, args.seconds, args.concurrency, raw=True)
        print(f"cancel route: {rate:.0f} requests/s ({args.concurrency} in flight, raw sockets)")


if __name__ == "__main__":
    asyncio.run(main())
