"""A lean OpenAI-compatible chat-completions server with a fixed latency, for throughput benchmarks.

The test suite's server (tests/fake_vlm_servers.py) is a threaded werkzeug server: right for
scripting failures, but on a 2-core machine it tops out near 290 requests/s and shares the GIL
with whatever runs beside it. This one is a single asyncio loop in its own process with HTTP/1.1
keep-alive, so it measures the client, not itself. Every request gets the same JSON answer after
`latency` seconds; the process records (arrival, finish) times on the system-wide monotonic clock
and hands them back when stopped.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

PHOTO = Path(__file__).resolve().parents[1] / "examples" / "media" / "skimage" / "coffee.png"


async def _serve(port_out: Any, stop: Any, times_out: Any, answer: str, latency: float) -> None:
    times: list[tuple[float, float]] = []
    body = json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }).encode()
    head = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: keep-alive\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in header.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                arrived = time.monotonic()
                await reader.readexactly(length)
                await asyncio.sleep(latency)
                writer.write(head + body)
                await writer.drain()
                times.append((arrived, time.monotonic()))
        except (asyncio.IncompleteReadError, asyncio.CancelledError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    port_out.send(server.sockets[0].getsockname()[1])
    while not stop.is_set():  # noqa: ASYNC110 - `stop` is a multiprocessing.Event set by another process
        await asyncio.sleep(0.05)
    server.close()
    times_out.send(times)


def _main(port_out: Any, stop: Any, times_out: Any, answer: str, latency: float) -> None:
    asyncio.run(_serve(port_out, stop, times_out, answer, latency))


class LatencyServer:
    def __init__(self, url: str, stop: Any, times_in: Any):
        self.url = url
        self._stop = stop
        self._times_in = times_in
        self.times: list[tuple[float, float]] = []

    def stop(self) -> list[tuple[float, float]]:
        """Stop serving; (arrival, finish) monotonic times of every answered request."""
        self._stop.set()
        self.times = self._times_in.recv()
        return self.times


@contextmanager
def latency_server(answer: dict, latency: float) -> Iterator[LatencyServer]:
    """Serve `answer` (the model's JSON output) to every chat-completions request after `latency` s."""
    ctx = mp.get_context("spawn")
    port_in, port_out = ctx.Pipe(duplex=False)
    times_in, times_out = ctx.Pipe(duplex=False)
    stop = ctx.Event()
    proc = ctx.Process(target=_main, args=(port_out, stop, times_out, json.dumps(answer), latency), daemon=True)
    proc.start()
    server = LatencyServer(f"http://127.0.0.1:{port_in.recv()}/v1", stop, times_in)
    try:
        yield server
    finally:
        if not stop.is_set():
            server.stop()
        proc.join(timeout=10)


def photo_frames(count: int, size: tuple[int, int], seed: int = 0, quality: int = 90) -> list[bytes]:
    """`count` distinct JPEGs of a bundled photo at `size` (W, H), each with its own 64 px noise
    patch: what a sampled video frame weighs (about 160 KB at 1024x683, q90), where random noise
    would weigh four times as much and a flat image almost nothing. Distinct, so no cache or
    per-image memo on the client can answer twice from one encoding."""
    import cv2

    from curation.media.jpeg import decode_image, encode_jpeg

    width, height = size
    base = cv2.resize(decode_image(PHOTO.read_bytes()), (width, height), interpolation=cv2.INTER_CUBIC)
    rng = np.random.default_rng(seed)
    patch = min(64, width, height)
    frames = []
    for _ in range(count):
        image = base.copy()
        y, x = int(rng.integers(0, height - patch + 1)), int(rng.integers(0, width - patch + 1))
        image[y:y + patch, x:x + patch] = rng.integers(0, 255, (patch, patch, 3), dtype=np.uint8)
        frames.append(encode_jpeg(image, quality))
    return frames
