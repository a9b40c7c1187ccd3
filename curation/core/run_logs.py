"""What a `curate run` writes besides its console: `<run_dir>/logs/`.

The console keeps what a user reads (progress bars, stage summaries, warnings); everything else
goes to the run directory:

    <run_dir>/logs/
      curate-<UTC time>.log          one per invocation (a rerun adds one): the driver's Python
                                     logging (curation.*, ray.*) and the native stderr of the
                                     driver process (Ray's C++ core worker writes its errors there)
      ray/<session>/                 a local run's Ray logs, copied at the end of each stage and of
                                     the run: worker-*.out|err (what actors and tasks printed),
                                     python-core-driver-*.log, ray-data/*.log

An `s3://` (or other object store) run writes them to a local temporary directory and uploads
what changed at the end of each stage and of the run.

Two of Ray's console notices are only noise for a `curate run`; `quiet_ray_console` keeps them
off the console while every log file still gets them (see `_console_noise`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from curation.core import storage

LOGS_DIR = "logs"
RAY_LOGS_DIR = "ray"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FILE_ONLY = "curate_file_only"  # a record with this attribute set is for the log file, not the console
log = logging.getLogger(__name__)

# Ray's own logger trees: both stop propagation, so the run's file handler is added to each.
RAY_LOGGERS = ("ray", "ray.data")
# A local runtime's session log files worth keeping with the run (relative to its logs/ dir).
RAY_FILES = ("worker-", "python-core-driver-")
RAY_SUBDIRS = ("ray-data",)

_active: list[RunLogs] = []  # the run being logged in this process (none outside `capture`)


# --------------------------------------------------------------------------------------------
# Ray's console notices
# --------------------------------------------------------------------------------------------


def _console_noise(record: logging.LogRecord) -> bool:
    """The two Ray log records `curate run` keeps off the console, told apart by the logger and
    function that emit them rather than by their wording:

    - the notice that a new local runtime turned token authentication on: it did, as it should
      for a runtime on loopback, and nothing is asked of the user (the notice for the opposite
      case, auth turned off, is kept);
    - Ray Data's one-time "Progress bars disabled": streaming.py turns Ray Data's bars off on
      purpose, curate draws its own per stage.
    """
    if record.name == "ray._private.authentication.authentication_token_setup":
        return record.funcName == "_warn_token_auth_enabled"
    if record.name == "ray.data._internal.progress":
        return record.funcName == "get_progress_manager" and str(record.msg).startswith("Progress bars disabled")
    return False


class _HideNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _console_noise(record)


def _console_handlers(logger: logging.Logger) -> list[logging.Handler]:
    """Handlers that print (Ray's PlainRayHandler is a StreamHandler); file handlers are not."""
    return [h for h in logger.handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


def quiet_ray_console() -> None:
    """Filter Ray's console handlers (idempotent; call before `ray.init`). Importing ray.data
    configures its logger afresh, so it is imported first. The handlers print WARNING and above,
    as before, also when the `ray` logger itself is let through at INFO for the run's log file."""
    import ray.data  # noqa: F401

    for name in RAY_LOGGERS:
        for handler in _console_handlers(logging.getLogger(name)):
            if handler.level < logging.WARNING:
                handler.setLevel(logging.WARNING)
            if not any(isinstance(f, _HideNoise) for f in handler.filters):
                handler.addFilter(_HideNoise())


# --------------------------------------------------------------------------------------------
# The run's log directory
# --------------------------------------------------------------------------------------------


class _StderrNow(logging.StreamHandler):
    """Prints to whatever sys.stderr is at the time (like logging's last-resort handler, which
    stops being used once the root logger has a handler of its own)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.addFilter(lambda record: not getattr(record, FILE_ONLY, False))

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class _RunFileHandler(logging.FileHandler):
    """The run's log file, in one format: `ray.init` re-formats every handler of the `ray`
    logger; this one keeps its own format."""

    def __init__(self, path: str):
        super().__init__(path, mode="a", encoding="utf-8")
        super().setFormatter(logging.Formatter(FORMAT))

    def setFormatter(self, fmt: logging.Formatter | None) -> None:  # noqa: N802 (logging's name)
        pass


class RunLogs:
    """The log files of one `curate run` invocation; `capture` is the way to use it."""

    def __init__(self, run_dir: str, local_ray: bool = True):
        self.remote = "://" in run_dir
        self.dest = storage.join(run_dir if self.remote else os.path.abspath(run_dir), LOGS_DIR)
        self.local = tempfile.mkdtemp(prefix="curate-logs-") if self.remote else self.dest
        self.local_ray = local_ray
        os.makedirs(self.local, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        name = f"curate-{stamp}.log"
        if self._taken(name):  # two invocations in one second: never append to another's file
            name = f"curate-{stamp}-{os.getpid()}.log"
        self.path = os.path.join(self.local, name)
        self.shown = storage.join(self.dest, name)  # where a user finds it
        self._handler: _RunFileHandler | None = None
        self._console: logging.Handler | None = None
        self._root_level = logging.WARNING
        self._saved_fd: int | None = None
        self._saved_stderr: Any = None
        self._sent: dict[str, tuple[int, int]] = {}  # local file -> (size, mtime_ns) last uploaded

    def _taken(self, name: str) -> bool:
        if os.path.exists(os.path.join(self.local, name)):
            return True
        return self.remote and storage.exists(storage.join(self.dest, name))

    # -- start and stop ------------------------------------------------------------------------

    def start(self, redirect_native: bool = True) -> None:
        quiet_ray_console()  # imports Ray, whose loggers stop propagating from then on
        handler = _RunFileHandler(self.path)
        self._handler = handler
        root = logging.getLogger()
        self._root_level = root.level
        if not root.handlers:  # warnings kept printing as they did through logging's last resort
            self._console = _StderrNow()
            self._console.setLevel(logging.WARNING)
            root.addHandler(self._console)
        root.addHandler(handler)
        root.setLevel(min(root.level, logging.INFO))
        for name in RAY_LOGGERS:
            logger = logging.getLogger(name)
            if not logger.propagate:  # a propagating one reaches the root's handler already
                logger.addHandler(handler)
        if redirect_native:
            self._redirect_native_stderr()

    def _redirect_native_stderr(self) -> None:
        """Point file descriptor 2 at the log file and give Python's sys.stderr a duplicate of the
        terminal. What Python prints (rich tables, tqdm bars, logging, tracebacks) still reaches
        the console; what native code writes straight to fd 2 (the C++ core worker's error lines,
        codec chatter) and what child processes inherit goes to the log instead."""
        try:
            sys.stderr.flush()
            fd = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):  # no real stderr (embedded, captured): leave it
            return
        if fd != 2:
            return
        console = os.dup(2)
        stream = open(console, "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None) or "utf-8",  # noqa: SIM115
                      errors="backslashreplace", closefd=True)
        self._saved_fd = os.dup(2)
        self._saved_stderr = sys.stderr
        sys.stderr = stream
        target = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(target, 2)
        os.close(target)

    def _restore_native_stderr(self) -> None:
        if self._saved_fd is None:
            return
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        ours = sys.stderr
        sys.stderr = self._saved_stderr
        os.dup2(self._saved_fd, 2)
        os.close(self._saved_fd)
        self._saved_fd = None
        with contextlib.suppress(OSError, ValueError):
            ours.close()

    def stop(self) -> None:
        self._restore_native_stderr()
        root = logging.getLogger()
        if self._handler is not None:
            for logger in [root, *(logging.getLogger(n) for n in RAY_LOGGERS)]:
                if self._handler in logger.handlers:
                    logger.removeHandler(self._handler)
            self._handler.close()
        if self._console is not None:
            root.removeHandler(self._console)
        root.setLevel(self._root_level)
        self.sync()
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)

    # -- copies and uploads --------------------------------------------------------------------

    def sync(self) -> None:
        """Copy the local Ray session's logs in, then upload what changed (object-store runs).
        Never fails a run: a log that cannot be copied is reported in the log and skipped."""
        if self._handler is not None:
            self._handler.flush()
        try:
            if self.local_ray:
                self._copy_ray_logs()
            if self.remote:
                self._upload()
        except OSError as e:
            log.warning("could not save the run's logs to %s: %s", self.dest, e)

    def _copy_ray_logs(self) -> None:
        source = _ray_logs_dir()
        if source is None:
            return
        target = os.path.join(self.local, RAY_LOGS_DIR, os.path.basename(os.path.dirname(source)))
        for name in sorted(os.listdir(source)):
            path = os.path.join(source, name)
            if name.startswith(RAY_FILES) and os.path.isfile(path):
                if name.startswith("python-core-driver-") and not name.endswith(f"_{os.getpid()}.log"):
                    continue  # another driver of a shared session
                _copy_if_changed(path, os.path.join(target, name))
            elif name in RAY_SUBDIRS and os.path.isdir(path):
                for sub in sorted(os.listdir(path)):
                    if os.path.isfile(os.path.join(path, sub)):
                        _copy_if_changed(os.path.join(path, sub), os.path.join(target, name, sub))

    def _upload(self) -> None:
        for folder, _, names in os.walk(self.local):
            for name in sorted(names):
                path = os.path.join(folder, name)
                stat = os.stat(path)
                seen = (stat.st_size, stat.st_mtime_ns)
                if self._sent.get(path) == seen:
                    continue
                rel = os.path.relpath(path, self.local).replace(os.sep, "/")
                storage.upload_file(path, storage.join(self.dest, rel))
                self._sent[path] = seen


def _version() -> str:
    """The installed distribution's version (read from its metadata: importing the `curation`
    package from core would be an import cycle)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("curation")
    except PackageNotFoundError:
        return "(not installed)"


def _ray_logs_dir() -> str | None:
    """The logs/ directory of the Ray session this process started or joined, if any."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        node = ray._private.worker._global_node  # Ray Data's own log helpers read it the same way
        path = node.get_logs_dir_path() if node is not None else None
    except (ImportError, AttributeError):
        return None
    return path if path and os.path.isdir(path) else None


def _copy_if_changed(src: str, dst: str) -> None:
    """Copy a log file unless the copy is current; empty files (most workers print nothing) are skipped."""
    stat = os.stat(src)
    if stat.st_size == 0:
        return
    with contextlib.suppress(FileNotFoundError):
        have = os.stat(dst)
        if have.st_size == stat.st_size and have.st_mtime_ns >= stat.st_mtime_ns:
            return
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copy2(src, dst)


# --------------------------------------------------------------------------------------------
# Entry points: the CLI wraps a run in `capture`; the runner calls `stage_finished`
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def capture(cfg: Any, argv: list[str] | None = None, redirect_native: bool = True) -> Iterator[RunLogs]:
    """Log this run to `<cfg.output>/logs/` while the block runs. On an error the console gets one
    line naming the log file, the file the traceback. `redirect_native=False` leaves file
    descriptor 2 alone (in-process callers whose stderr is captured)."""
    logs = RunLogs(str(cfg.output), local_ray=not cfg.cluster.address)
    logs.start(redirect_native)
    _active.append(logs)
    args = argv if argv is not None else sys.argv[2:]  # after `curate run`
    log.info("curate %s: curate run %s (pid %d)", _version(), " ".join(args), os.getpid())
    try:
        yield logs
    except BaseException as e:
        log.exception("run failed: %s", e, extra={FILE_ONLY: True})  # the CLI prints its own one line
        from curation.core.summary import console

        console.print(f"[dim]log: {logs.shown}[/dim]", soft_wrap=True, highlight=False)
        raise
    else:
        log.info("run finished")
    finally:
        _active.remove(logs)
        logs.stop()


def stage_finished(results: list[Any] = ()) -> None:
    """End of a stage (or of a streamed chain of them): note each result and save the logs so far.
    Does nothing outside `capture` (the Python API, tests)."""
    if not _active:
        return
    for r in results:
        log.info("stage %s finished: %s -> %s (%d processed, %.1f s)", r.name, r.counts, r.stage_dir, r.processed, r.wall_s)
    _active[-1].sync()
