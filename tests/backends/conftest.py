"""Loopback API servers shared by the backend tests: one OpenAI-compatible and one Gemini server
per test module, and `server`, each test run once against each of them. A module using `server`
names its key (`KEY_ENV`, `KEY`) and what the server answers by default (`server_default()`)."""

from __future__ import annotations

import pytest

from tests.fixtures.vlm_servers import gemini_server, openai_server


@pytest.fixture(scope="module")
def servers():
    with openai_server() as o, gemini_server() as g:
        yield {"openai": o, "gemini": g}


@pytest.fixture(params=["openai", "gemini"])
def server(request, servers, monkeypatch):
    module = request.module
    monkeypatch.setenv(module.KEY_ENV, module.KEY)
    srv = servers[request.param]
    srv.reset(default=module.server_default())
    srv.backend = request.param
    yield srv
    srv.reset()
