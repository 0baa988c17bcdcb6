"""Scale-out on Ray (extra ``ray``): :mod:`clipserve.ray.serve` runs the HTTP service as a Ray Serve
deployment of replicas; :mod:`clipserve.ray.data` embeds datasets with Ray Data."""

from clipserve.ray.data import EmbedBatch, run_job
from clipserve.ray.serve import PROXY_ENV, ClipserveReplica, app

__all__ = ["PROXY_ENV", "ClipserveReplica", "EmbedBatch", "app", "run_job"]
