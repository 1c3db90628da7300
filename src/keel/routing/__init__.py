"""Routing: which deployment serves a request, and what happens when it fails.

Every model id is a group of deployments (a plain model is a group of one). The router picks a
deployment by the group's strategy, retries and fails over by the group's policy, and keeps each
deployment's circuit breaker, latency and load.
"""

from keel.routing.executor import AttemptTrace, failure_kind
from keel.routing.group import Deployment, ModelGroup
from keel.routing.router import Capability, Router, build_router, check_deployments

__all__ = [
    "AttemptTrace",
    "Capability",
    "Deployment",
    "ModelGroup",
    "Router",
    "build_router",
    "check_deployments",
    "failure_kind",
]
