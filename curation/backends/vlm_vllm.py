"""`vlm=vllm`: the OpenAI backend, spread over the vLLM servers the run started (`vllm_server.py`).

Everything but the choice of server is the OpenAI backend's: prompts, images, the JSON-schema
response format (vLLM applies it by guided decoding), classification of failures, and, above it,
the shared cache, retries, validation re-ask, usage and budget.

Which server: the one with the fewest of this worker's requests in flight, in turn among equals,
so a slow server gets fewer. A server whose connection fails (it died; its actor restarts it) is
set aside until its `/health` answers again, so the retry of a request, made by the shared retry
loop, goes to another server. When none is up, a call waits for one to come back (at most
`server.start_timeout_s`) rather than spending its retries on a server that is still loading.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from pydantic import BaseModel

from curation.backends.chat_http import ChatEndpoint, server_gone
from curation.backends.usage import VLMError
from curation.backends.vllm_server import VLLMServerConfig
from curation.backends.vlm_base import Completion
from curation.backends.vlm_openai import OpenAIVLM

# How often a set-aside server's /health is asked whether it is back.
PROBE_EVERY_S = 0.5


@dataclass
class Endpoint:
    """One server as this worker sees it."""

    url: str  # http://host:port/v1
    client: ChatEndpoint  # bound to `url`
    in_flight: int = 0
    answered: int = 0
    down: bool = False  # its connection failed; back once /health answers
    probed_at: float = 0.0


class VLLMVLM(OpenAIVLM):
    backend = "vllm"

    async def _open(self) -> None:
        server = self.cfg.server or VLLMServerConfig()
        if not server.urls:
            raise VLMError("vlm_setup: no vLLM server to send to: vlm.server.urls is empty (the run fills it in when "
                           "the stage starts its servers; with vlm.server.replicas=0 list running ones)")
        self._endpoints = [Endpoint(url, self._endpoint(url)) for url in server.urls]
        self._wait_s = server.start_timeout_s
        self._turn = 0
        self._probing: asyncio.Task | None = None

    async def _aclose(self) -> None:
        if self._probing is not None:
            self._probing.cancel()
        for endpoint in self._endpoints:
            await endpoint.client.close()

    def _call_timeout_s(self) -> float | None:
        # `_call` bounds the HTTP exchange itself; waiting for a restarting server is bounded apart.
        return None

    def answered(self) -> dict[str, int]:
        """Answers per server URL from this worker (tests, logs)."""
        return {e.url: e.answered for e in self._endpoints}

    async def _call(self, prompt: str, images: list[bytes], schema: type[BaseModel], images_first: bool = False) -> Completion:
        endpoint = await self._pick()
        endpoint.in_flight += 1
        try:
            done = await asyncio.wait_for(self._complete(endpoint.client, prompt, images, schema, images_first), self.cfg.timeout_s + 5.0)
        except Exception as e:
            if server_gone(e):  # a busy server is slow (a timeout), not gone
                endpoint.down = True
            raise
        finally:
            endpoint.in_flight -= 1
        endpoint.answered += 1
        return done

    async def _pick(self) -> Endpoint:
        deadline = time.monotonic() + self._wait_s
        while True:
            up = [e for e in self._endpoints if not e.down]
            if len(up) < len(self._endpoints) and (self._probing is None or self._probing.done()):
                self._probing = asyncio.create_task(self._probe_down())
            if up:
                self._turn += 1
                order = {id(e): (i - self._turn) % len(self._endpoints) for i, e in enumerate(self._endpoints)}
                return min(up, key=lambda e: (e.in_flight, order[id(e)]))
            if time.monotonic() > deadline:
                raise VLMError(f"vlm_connection: no vLLM server answered /health within {self._wait_s:g}s "
                               f"({', '.join(e.url for e in self._endpoints)})")
            await asyncio.sleep(PROBE_EVERY_S / 2)

    async def _probe_down(self) -> None:
        """Ask each set-aside server's /health once (at most every PROBE_EVERY_S); bring back those that answer."""
        now = time.monotonic()
        due = [e for e in self._endpoints if e.down and now - e.probed_at >= PROBE_EVERY_S]
        if not due:
            await asyncio.sleep(PROBE_EVERY_S)
            return
        for endpoint, healthy in zip(due, await asyncio.gather(*(self._healthy(e) for e in due))):
            endpoint.probed_at = time.monotonic()
            endpoint.down = not healthy

    async def _healthy(self, endpoint: Endpoint) -> bool:
        return await endpoint.client.answers(endpoint.url.removesuffix("/v1") + "/health", timeout_s=2.0)
