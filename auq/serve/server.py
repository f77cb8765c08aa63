"""Running the app on uvicorn, with a shutdown that answers what it holds.

uvicorn's graceful shutdown stops accepting connections, waits for the requests in
flight, then runs the app's lifespan shutdown. Requests in flight here may sit in
the batcher's queue waiting for company (``max_wait_ms``), so :class:`Server` first
tells the batcher to stop waiting (:meth:`~auq.serve.batcher.DynamicBatcher.drain`);
the lifespan shutdown then closes it once the last answer is out.
"""

from __future__ import annotations

import socket
from typing import Any

__all__ = ["make_server", "serve"]


def make_server(app: Any, **options: Any):
    """A ``uvicorn.Server`` for an app of :func:`~auq.serve.create_app`.

    Parameters
    ----------
    app : Starlette
        The app (its ``state.service`` is drained when the server stops).
    **options
        ``uvicorn.Config`` options (``log_level``, ``timeout_graceful_shutdown``, ...).
    """
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            app.state.service.batcher.drain()
            await super().shutdown(sockets=sockets)

    options.setdefault("lifespan", "on")
    options.setdefault("log_level", "warning")
    return Server(uvicorn.Config(app, **options))


def serve(app: Any, sock: socket.socket, **options: Any) -> None:
    """Serve ``app`` on a bound, listening socket until SIGTERM / SIGINT (or ``should_exit``)."""
    make_server(app, **options).run(sockets=[sock])
