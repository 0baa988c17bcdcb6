"""The HTTP service of ``clipserve serve`` as a Ray Serve deployment: replicas across CPUs, GPUs
and nodes behind Ray's HTTP proxy.

Each replica builds the very app ``clipserve serve`` runs (:func:`clipserve.server.app.create_app`:
same routes, schemas, errors, auth, limits and metrics), handed to Ray through ``@serve.ingress``
once the replica has loaded its model, so a replica is ready only when it can embed. Concurrent
requests to a replica share model calls through the app's own dynamic batchers.

Start it with ``clipserve serve --ray``, with ``serve run clipserve.ray:app model=… replicas=2``
(or a Serve config file naming ``clipserve.ray:app``), or from Python with
``serve.run(clipserve.ray.app(model=…, replicas=2))``.
"""

from __future__ import annotations

import inspect
import logging
import os
import signal
import threading
from typing import Any

from ray import serve
from ray.serve import Application

from clipserve.inputs import Item
from clipserve.resources import tune_malloc
from clipserve.server.app import create_app
from clipserve.settings import ServerSettings, resolve

log = logging.getLogger(__name__)

DEPLOYMENT = "clipserve"
GRACEFUL_SHUTDOWN_S = 30.0
HEALTH_CHECK_PERIOD_S = 10.0


@serve.ingress()
class ClipserveReplica:
    """One replica: one model on its device, serving clipserve's FastAPI app."""

    def __init__(self, settings: ServerSettings) -> None:
        tune_malloc()
        self.asgi_app = create_app(settings)  # loads the model: the replica is not ready before
        self.models = self.asgi_app.state.models
        log.info("replica %s serves %s", os.getpid(), ", ".join(self.models.models))

    def __serve_build_asgi_app__(self):
        return self.asgi_app

    async def check_health(self) -> None:
        """Ray's periodic health check: one tiny item through the default model while it is loaded
        (Ray replaces the replica when it raises)."""
        default = self.models.default
        if default.service is not None and "text" in default.modalities:
            await default.service.embed([Item(0, "text", "text", "health check")])


PROXY_ENV = {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "clipserve.server.proxy:proxy_middlewares"}
"""The environment that makes Ray Serve's proxy install clipserve's middleware
(:class:`clipserve.server.proxy.ReplicaLossAs503`): a replica lost mid-request is answered 503."""


def http_options(settings: ServerSettings) -> dict[str, Any]:
    """Ray Serve's proxy options: where it listens, and how long a request may take end to end."""
    return {"host": settings.host, "port": settings.port, "request_timeout_s": settings.ray_request_timeout_s}


def deployment_options(settings: ServerSettings) -> dict[str, Any]:
    """Ray Serve options from the ``replicas``/autoscaling and resource settings."""
    options: dict[str, Any] = {
        "name": DEPLOYMENT,
        "max_ongoing_requests": settings.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": settings.replica_cpus, "num_gpus": settings.replica_gpus},
        "graceful_shutdown_timeout_s": GRACEFUL_SHUTDOWN_S,
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
    }
    if settings.max_replicas:
        options["autoscaling_config"] = {
            "min_replicas": settings.min_replicas,
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": settings.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = settings.replicas
    return options


def app(args: dict[str, Any] | None = None, /, **options: Any) -> Application:
    """The Ray Serve application: ``serve.run(app(model="ViT-B-32::openai", replicas=2))``.

    Every setting of ``clipserve serve`` applies (arguments, then ``CLIPSERVE_*`` variables, then
    a YAML file given as ``config``). ``serve run clipserve.ray:app key=value …`` and Serve config
    files (``import_path: clipserve.ray:app`` with ``args:``) pass their arguments as the dict ``args``.
    """
    given = {**(args or {}), **options}
    config = given.pop("config", None)
    return build(resolve(ServerSettings, config, **given))


# Ray calls an application builder with one dict, and counts its parameters to check it can.
app.__signature__ = inspect.Signature([inspect.Parameter("args", inspect.Parameter.POSITIONAL_ONLY)])


def build(settings: ServerSettings) -> Application:
    """The application for ``settings``: one deployment of :class:`ClipserveReplica`."""
    if settings.ssl_certfile or settings.ssl_keyfile:
        raise ValueError("with Ray, TLS is Ray Serve's proxy's: ssl_certfile/ssl_keyfile do not apply")
    settings.resolved_api_key()  # a missing or empty key file fails here, not in every replica
    deployment = serve.deployment(ClipserveReplica).options(**deployment_options(settings))
    return deployment.bind(settings)


def run(settings: ServerSettings) -> None:
    """``clipserve serve --ray``: join (or start) Ray, serve on ``host:port`` through Ray Serve's
    proxy, and stop the application on SIGTERM/SIGINT."""
    import ray

    application = build(settings)
    ray.init(address=settings.ray_address, runtime_env={"env_vars": PROXY_ENV}, log_to_driver=False)
    serve.start(http_options=http_options(settings))
    serve.run(application, name=DEPLOYMENT, route_prefix="/")
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    log.warning(
        "serving %s on http://%s:%d through Ray Serve",
        ", ".join(settings.model),
        settings.host,
        settings.port,
    )
    stopped.wait()
    serve.delete(DEPLOYMENT)
    ray.shutdown()
