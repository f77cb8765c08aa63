"""The reward server: ``auq serve`` and its dynamic request batcher.

============================  ===================================================
:func:`create_app`            the Starlette app around a loaded reward model
:class:`ServeConfig`          batching budget, wait, request limits, API key
:class:`Objective`            the default objective and its options
:class:`DynamicBatcher`       concurrent requests coalesced into one engine call
:class:`RewardClient`         a standard-library client (``score``, ``get_reward``)
:func:`serve`                 uvicorn, with a shutdown that answers queued requests
============================  ===================================================

Nothing here imports Starlette or uvicorn until an app is built
(``pip install 'auq[serve]'``).
"""

from auq.serve.app import RewardService, ServeConfig, create_app
from auq.serve.batcher import BatcherClosed, DynamicBatcher, QueueFull
from auq.serve.client import DEFAULT_URL, RewardClient, ServerError
from auq.serve.schemas import Objective, RequestError
from auq.serve.server import make_server, serve

__all__ = [
    "DEFAULT_URL",
    "BatcherClosed",
    "DynamicBatcher",
    "Objective",
    "QueueFull",
    "RequestError",
    "RewardClient",
    "RewardService",
    "ServeConfig",
    "ServerError",
    "create_app",
    "make_server",
    "serve",
]
