"""Helpers of the server tests: real uvicorn servers on free loopback ports, offline answers.

Servers run the real app (:func:`auq.serve.create_app`) on :func:`auq.serve.make_server`
in a thread, on a socket bound to 127.0.0.1 port 0; ``stop()`` is uvicorn's graceful
shutdown.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from auq.objectives import penalized_reward
from auq.serve import RewardClient, ServeConfig, create_app, make_server


def offline(rm, prompts, responses, objective="mean", **options):
    """What a server must answer: ``rm.score`` of the same texts, and the penalised reward."""
    rp = rm.score(prompts, responses, progress=False)
    return rp, penalized_reward(rp, objective, **options)


@dataclass
class LiveServer:
    url: str
    app: object
    server: object
    thread: threading.Thread

    @property
    def service(self):
        return self.app.state.service

    def client(self, **options) -> RewardClient:
        return RewardClient(self.url, retries=0, **options)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=120)
        assert not self.thread.is_alive(), "the server did not stop"


@contextmanager
def live_server(rm, config: ServeConfig | None = None) -> Iterator[LiveServer]:
    """A real uvicorn server for ``rm`` on a free loopback port, in a thread."""
    app = create_app(rm, config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    server = make_server(app, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120  # a hang guard, not a measurement
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    live = LiveServer(f"http://127.0.0.1:{sock.getsockname()[1]}", app, server, thread)
    try:
        yield live
    finally:
        if thread.is_alive():
            live.stop()
        sock.close()
