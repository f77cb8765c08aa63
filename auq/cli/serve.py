"""``auq serve``: a saved reward model behind HTTP, with dynamic batching.

::

    auq serve rm/ --objective lcb --k 1.0                 # http://127.0.0.1:8000
    AUQ_API_KEY=secret auq serve rm/ --host 0.0.0.0 --port 8000 --device cuda

Everything is checked before the model loads: the options, the model directory,
that the address can be bound. The server listens on loopback unless ``--host``
says otherwise; binding another address without an API key prints a warning.
SIGTERM or Ctrl-C stops taking connections, answers the requests already in,
then exits (uvicorn then re-raises the signal: exit status 143 after SIGTERM, 130
after Ctrl-C). See :mod:`auq.serve` for the endpoints.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
import warnings
from pathlib import Path

from auq.cli.errors import CliError, one_line
from auq.types import TruncationWarning

__all__ = ["add_parser", "bind", "run_server"]

PROG = "auq serve"


def _int(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    return parse


def _number(positive: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        ok = 0 < value < float("inf") if positive else 0 <= value < float("inf")
        if not ok:
            bound = "> 0" if positive else ">= 0"
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text!r}")
        return value

    return parse


def add_parser(sub: argparse._SubParsersAction, debug: argparse.ArgumentParser) -> None:
    """Register ``auq serve``."""
    from auq.objectives import OBJECTIVES
    from auq.scoring.engine import PRECISIONS

    serve = sub.add_parser(
        "serve",
        parents=[debug],
        help="serve a saved reward model over HTTP with dynamic batching (OpenRLHF, verl)",
        description="Load MODEL_DIR and answer POST /score ({prompts, responses, objective} -> "
        "mean, std, reward), POST /get_reward (OpenRLHF's remote reward model: {query, prompts, "
        "labels} -> rewards, scores, extra_logs) and GET /health. Concurrent requests are "
        "coalesced into batches of at most --max-batch-tokens tokens, each scored in one "
        "engine call; a request waits at most --max-wait-ms for others to join it. Needs the "
        "serve extra: pip install 'auq[serve]'.",
    )
    serve.add_argument("model_dir", metavar="MODEL_DIR", help="a directory from save_pretrained")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, loopback)"
    )
    serve.add_argument(
        "--port", type=_int(0), default=8000, help="port (default 8000; 0: any free port)"
    )
    serve.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on /score and /get_reward (default: "
        "$AUQ_API_KEY; prefer the variable, a command line is visible to other users)",
    )
    serve.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="mean",
        help="the default penalised reward (default mean; /get_reward always uses it)",
    )
    serve.add_argument("--lam", type=_number(False), default=0.5, help="λ of uwo (default 0.5)")
    serve.add_argument("--k", type=_number(False), default=1.0, help="k of lcb (default 1.0)")
    serve.add_argument("--beta", type=_number(True), default=1.0, help="β of effective (default 1)")
    serve.add_argument(
        "--max-batch-tokens",
        type=_int(1),
        default=16384,
        metavar="N",
        help="tokens of the texts per coalesced batch (default 16384; a larger request runs "
        "alone; the engine micro-batches inside)",
    )
    serve.add_argument(
        "--max-wait-ms",
        type=_number(False),
        default=5.0,
        metavar="MS",
        help="how long a request waits for others to join its batch (default 5)",
    )
    serve.add_argument(
        "--max-batch-requests",
        type=_int(1),
        default=None,
        metavar="N",
        help="requests per batch at most (default: no limit; 1 turns batching off)",
    )
    serve.add_argument(
        "--max-request-rows",
        type=_int(1),
        default=4096,
        metavar="N",
        help="rows per request at most (default 4096; more: 413)",
    )
    serve.add_argument(
        "--max-request-bytes",
        type=_int(1),
        default=16 * 2**20,
        metavar="N",
        help="request body bytes at most (default 16 MiB; more: 413)",
    )
    serve.add_argument(
        "--max-queue-rows",
        type=_int(1),
        default=65536,
        metavar="N",
        help="rows waiting at most (default 65536; more: 503 with Retry-After)",
    )
    serve.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: the GPU if there is one)"
    )
    serve.add_argument("--precision", choices=PRECISIONS, default="auto")
    serve.add_argument(
        "--threads", type=_int(1), default=None, metavar="N", help="torch CPU threads"
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=_number(True),
        default=60.0,
        metavar="S",
        help="seconds the requests in flight get to finish after SIGTERM (default 60)",
    )
    serve.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="warning",
        help="uvicorn's log level (default warning); 'info' also logs every request",
    )
    serve.set_defaults(func=_serve)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv4 or IPv6), or a :class:`CliError`."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as err:
        raise CliError(f"--host {host!r} is not an address of this machine: {err}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)  # clients that come early wait in the backlog
    except OSError as err:
        sock.close()
        raise CliError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.set_inheritable(True)
    return sock


def _is_loopback(sock: socket.socket) -> bool:
    return ipaddress.ip_address(sock.getsockname()[0].split("%")[0]).is_loopback


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _InfoLines(logging.Handler):
    """``auq.serve`` info records as ``auq serve: ...`` lines (warnings have their own)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING:
            print(f"{PROG}: {record.getMessage()}", file=sys.stderr, flush=True)


def _load(model_dir: Path, device: str | None, precision: str):
    from auq.cli.score import resolve_device
    from auq.models.reward_model import RewardModel

    where = resolve_device(device)
    try:
        rm = RewardModel.from_pretrained(model_dir, device=where)
    except Exception as err:  # a damaged directory fails in many ways; name it, keep the cause
        raise CliError(
            f"cannot load the reward model in {str(model_dir)!r}: {type(err).__name__}: "
            f"{one_line(err)}"
        ) from err
    # requests are mostly seen once: a feature cache would only grow in host memory
    rm.scoring = rm.scoring.replace(precision=precision, feature_cache=False)
    return rm


def run_server(args: argparse.Namespace) -> int:
    """Check the options, bind, load the model and serve until SIGTERM / Ctrl-C."""
    from auq.cli.inputs import check_model_dir

    try:
        import uvicorn  # noqa: F401  (checked here: the server needs it)

        from auq.serve import Objective, ServeConfig, create_app
        from auq.serve.app import logger as serve_logger
        from auq.serve.server import make_server
    except ImportError as err:
        raise CliError(
            f"auq serve needs the serve extra ({one_line(err)}): pip install 'auq[serve]'"
        ) from None
    api_key = args.api_key if args.api_key is not None else os.environ.get("AUQ_API_KEY")
    config = ServeConfig(
        objective=Objective(args.objective, lam=args.lam, k=args.k, beta=args.beta),
        api_key=api_key or None,
        max_batch_tokens=args.max_batch_tokens,
        max_wait_ms=args.max_wait_ms,
        max_batch_requests=args.max_batch_requests,
        max_request_rows=args.max_request_rows,
        max_request_bytes=args.max_request_bytes,
        max_queue_rows=args.max_queue_rows,
    )
    model_dir = check_model_dir(args.model_dir)
    sock = bind(args.host, args.port)
    try:
        if not _is_loopback(sock) and config.api_key is None:
            print(
                f"{PROG}: warning: listening on {args.host} without an API key: anyone who can "
                "reach this port can use the model (set AUQ_API_KEY or --api-key)",
                file=sys.stderr,
            )
        if args.threads is not None:
            import torch

            torch.set_num_threads(args.threads)
        rm = _load(model_dir, args.device, args.precision)
        # truncation is counted in every answer and in /health, not warned per batch
        warnings.simplefilter("ignore", TruncationWarning)
        app = create_app(rm, config)
        handler = _InfoLines()
        serve_logger.addHandler(handler)
        serve_logger.setLevel(logging.INFO)
        info = app.state.service.model_info()
        print(
            f"{PROG}: {info['method']} reward model ({info['members']} members, "
            f"{info['device']}) from {model_dir} on {_url(sock)}; objective "
            f"{config.objective.label}; auth {'on' if config.api_key else 'off'}",
            file=sys.stderr,
            flush=True,
        )
        server = make_server(
            app,
            log_level=args.log_level,
            access_log=args.log_level in ("debug", "info"),
            timeout_graceful_shutdown=args.shutdown_timeout,
        )
        try:
            server.run(sockets=[sock])
        finally:
            serve_logger.removeHandler(handler)
    finally:
        sock.close()
    return 0


def _serve(args: argparse.Namespace) -> int:
    return run_server(args)
