"""vLLM OpenAI-compatible servers started by the Ray job itself (`vlm=vllm`): one per GPU worker,
each a Ray actor that runs the server command as a child process, health-checks it, restarts it
when it dies and kills its process group at the end of the stage.

Why servers, and not `ray.data.llm`'s vLLM processor. The processor runs the engine inside Ray
Data's map workers, so (1) the job's own environment must import vllm, which pins its own torch
(vllm 0.34.0: torch==2.14.0; curate: 2.14.1) and cannot share curate's install; a server is a
command, so it runs from its own environment (`/opt/vllm/bin/vllm` in the Docker `vllm` target)
while the stage keeps curate's; (2) requests would bypass the VLM stage machinery: the processor
has its own pre/post-processing, so the response cache, the budget, usage accounting and the
validation re-ask (a second round for only the answers that did not fit) would have to be built
again around it; over HTTP the stages use the existing OpenAI backend unchanged (same prompts,
schemas, guided JSON through `response_format`, validation, cache, usage); (3) nothing of the
processor can run without the engine, while a server can be replaced by any process speaking the
same API, so CI runs this whole lifecycle (placement, health, restart, shutdown, start failures)
with a loopback stand-in. The price: images travel as base64 over loopback/LAN HTTP, which costs
little next to the generation itself.

The server command is a template (`{model}`, `{host}`, `{port}`); the actor asks Ray for
`num_gpus` (and any custom resource), so Ray sets CUDA_VISIBLE_DEVICES for it and the child
inherits it. This module is one server and its config; `vllm_pool.py` starts and stops a run's
servers on the driver, `vlm_vllm.py` spreads a worker's requests over them.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

# How often the supervisor looks at the child and polls its health endpoints while it starts.
POLL_S = 0.25
# SIGTERM first so vLLM releases GPU memory and its engine processes; SIGKILL after this long.
STOP_GRACE_S = 15.0
# Lines of the server's output quoted in a start error (a Python traceback's last frames and message).
TAIL_LINES = 15


class VLLMServerConfig(BaseModel):
    """How the run starts its vLLM servers (`vlm.server.*`, read only when `vlm.backend=vllm`)."""

    model_config = ConfigDict(extra="forbid")

    command: list[str] = Field(
        default=["vllm", "serve", "{model}", "--host", "{host}", "--port", "{port}", "--served-model-name", "{model}",
                 "--generation-config", "vllm"],
        description="the server's argv; {model}, {host} and {port} are filled in (quote them on the command line)")
    extra_args: list[str] = Field(default_factory=list, description="appended to `command` (same placeholders), "
                                  "e.g. [--max-model-len, '16384', --tensor-parallel-size, '2']")
    replicas: int | None = Field(None, ge=0, description="servers to start; None: one per `num_gpus` share of the "
                                 "cluster's GPUs; 0: start none and use `urls`")
    num_gpus: float = Field(1.0, ge=0, description="GPUs per server (Ray sets CUDA_VISIBLE_DEVICES for the child)")
    num_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves per server (its HTTP front end and tokenizer)")
    custom_resources: dict[str, float] | None = Field(None, description="Ray custom resources per server, e.g. "
                                                      "{gpu_node: 1}, to place servers on one worker group")
    host: str | None = Field(None, description="address the server binds; None: the node's IP as Ray knows it, so "
                             "workers on other nodes reach it")
    start_timeout_s: float = Field(900.0, gt=0, description="a server not healthy by then is a stage error "
                                   "(the first start downloads the weights)")
    max_restarts: int = Field(3, ge=0, description="restarts of a server that died after it was healthy")
    urls: list[str] = Field(default_factory=list, description="the endpoints (http://host:port/v1) requests are spread "
                            "over: the run fills this in from the servers it starts; with replicas=0, list servers started "
                            "elsewhere")

    def argv(self, model: str, host: str, port: int) -> list[str]:
        """The command with its placeholders filled in. Plain replacement, not str.format: arguments
        may hold JSON (`--limit-mm-per-prompt '{"image": 4}'`)."""
        values = {"{model}": model, "{host}": host, "{port}": str(port)}
        out = []
        for arg in [*self.command, *self.extra_args]:
            for placeholder, value in values.items():
                arg = arg.replace(placeholder, value)
            out.append(arg)
        return out


class ServerStartError(RuntimeError):
    """A server did not become healthy: the message names the model, the command and the cause."""


@dataclass
class Started:
    """What a server actor's `start` answers: its URL, or why it did not start."""

    url: str | None
    error: str | None


# --------------------------------------------------------------------------------------------
# one server process (runs inside its actor)
# --------------------------------------------------------------------------------------------


def free_port(host: str) -> int:
    """A port free on `host` now. The server binds it a moment later; losing that race is a start
    error that names the port (the server says "address already in use")."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the thread that started it ends, so a server
    never outlives an actor that was killed without `stop()` (a driver crash, `ray.kill`)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _get_json(url: str, timeout: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


class ServerProcess:
    """One server child: a supervisor thread launches it, waits until `/health` and `/v1/models`
    answer, then watches it and relaunches it (same port, so clients' URLs stay valid) when it
    dies, at most `max_restarts` times. The thread that launches the child is the one it dies
    with (`_die_with_parent`), so launching happens only there."""

    def __init__(self, cfg: VLLMServerConfig, model: str, label: str):
        import ray.util

        self.cfg = cfg
        self.model = model
        self.label = label
        node_ip = ray.util.get_node_ip_address()
        self.host = cfg.host or node_ip
        advertised = node_ip if self.host in ("0.0.0.0", "::") else self.host
        self.port = free_port(self.host)
        self.url = f"http://{'[' + advertised + ']' if ':' in advertised else advertised}:{self.port}/v1"
        self.argv = cfg.argv(model, self.host, self.port)
        self.log_dir = tempfile.mkdtemp(prefix="curate-vllm-")
        self.log_path = os.path.join(self.log_dir, f"server-{self.port}.log")
        self.restarts = 0
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._first = threading.Event()
        self._error: str | None = None
        self._thread = threading.Thread(target=self._supervise, name=f"vllm-{label}", daemon=True)

    # ---- what the actor exposes --------------------------------------------------------------
    def start(self) -> Started:
        """Launch and wait until healthy (at most `start_timeout_s`); never raises."""
        self._thread.start()
        self._first.wait()
        return Started(None if self._error else self.url, self._error)

    def pid(self) -> int | None:
        with self._lock:
            return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def restart_count(self) -> int:
        return self.restarts

    def stop(self) -> None:
        """Kill the child's process group (vLLM's engine processes with it) and end the supervisor."""
        self._stopping.set()
        self._kill()
        if self._thread.is_alive():
            self._thread.join(timeout=STOP_GRACE_S + 5)
        shutil.rmtree(self.log_dir, ignore_errors=True)

    # ---- supervision -------------------------------------------------------------------------
    def _supervise(self) -> None:
        while not self._stopping.is_set():
            cause = self._launch_and_wait()
            if cause is None:
                self._first.set()  # healthy: start() returns the URL
                cause = self._watch()
                if cause is None:  # stopped
                    return
            self._kill()
            if not self._first.is_set():
                # A first start that fails would fail the same way again: report it now.
                self._error = f"{cause} (command: {shlex.join(self.argv)})\n{self._tail()}"
                self._first.set()
                return
            if self.restarts >= self.cfg.max_restarts:
                log.error("vLLM server %s (%s): %s; no restarts left (%d)\n%s", self.label, self.url, cause,
                          self.cfg.max_restarts, self._tail())
                return
            self.restarts += 1
            log.warning("vLLM server %s (%s): %s; restart %d/%d", self.label, self.url, cause, self.restarts,
                        self.cfg.max_restarts)

    def _launch_and_wait(self) -> str | None:
        """Start the child and poll until it serves `model`; the cause when it does not."""
        try:
            with self._lock, open(self.log_path, "ab") as out:
                self._proc = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True, preexec_fn=_die_with_parent)  # noqa: PLW1509 - only prctl, see _die_with_parent
        except OSError as e:
            return f"cannot run {self.argv[0]!r}: {e.strerror or e}"
        deadline = time.monotonic() + self.cfg.start_timeout_s
        root = self.url.removesuffix("/v1")
        while not self._stopping.is_set():
            code = self._proc.poll()
            if code is not None:
                return f"the server exited with code {code} before it was healthy"
            if time.monotonic() > deadline:
                return f"the server was not healthy within start_timeout_s={self.cfg.start_timeout_s:g}s"
            try:
                _get_json(f"{root}/health", timeout=2)
                served = [m.get("id") for m in (_get_json(f"{root}/v1/models", timeout=2) or {}).get("data", [])]
            except (OSError, ValueError):
                time.sleep(POLL_S)
                continue
            if self.model not in served:
                return f"the server serves {served}, not {self.model!r} (its --served-model-name must be the model)"
            return None
        return "stopped while starting"

    def _watch(self) -> str | None:
        """Wait until the child exits (its cause) or `stop()` (None)."""
        while not self._stopping.wait(POLL_S):
            code = self._proc.poll()
            if code is not None:
                return f"the server exited with code {code}"
        return None

    def _kill(self) -> None:
        """SIGTERM the child's process group, then SIGKILL what is left of it. The group, even when
        the child itself has exited: vLLM's engine processes are in it and hold the GPU after their
        front end died, and a restart next to them would not fit."""
        with self._lock:
            proc = self._proc
        if proc is None:
            return
        for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
            deadline = time.monotonic() + wait_s
            try:
                os.killpg(proc.pid, sig)  # its own session: the group id is the child's pid
                while time.monotonic() < deadline:
                    proc.poll()  # reap the child, or the group never empties
                    os.killpg(proc.pid, 0)  # raises once no member is left
                    time.sleep(POLL_S / 5)
            except ProcessLookupError:
                return

    def _tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - 16384))
                lines = [line for line in f.read().decode(errors="replace").splitlines() if line.strip()]
        except OSError:
            lines = []
        if not lines:
            return "(it wrote nothing)"
        return "last lines of its output:\n" + "\n".join(f"  | {line}" for line in lines[-TAIL_LINES:])
