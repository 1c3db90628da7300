"""The permission matrix: which role holds which permission, and which permission every route
needs. One table for the whole API, so the documentation and the role-by-route test read the
same thing the server enforces. A route missing from `ROUTE_PERMISSIONS` is refused to all but
admins (and a test fails), so a new route can't ship open by accident.
"""

from __future__ import annotations

from typing import Literal

from keel.identity import ROLES, role_rank

__all__ = [
    "PERMISSIONS",
    "PUBLIC_ROUTES",
    "ROUTE_PERMISSIONS",
    "Permission",
    "RouteClass",
    "minimum_role",
    "permission_for",
    "role_allows",
    "route_class",
]

Permission = Literal[
    "self",
    "models.read",
    "inference",
    "deployments.read",
    "requests.read",
    "registry.read",
    "registry.write",
    "registry.approve",
    "usage.read",
    "keys.own",
    "directory.read",
    "directory.write",
    "audit.read",
    # monitoring
    "drift.read",
    "quality.read",
    "metrics.read",
    "alerts.read",
    "alerts.write",
    # experiments and evaluation
    "experiments.read",
    "experiments.write",
]
RouteClass = Literal["inference", "management"]

# The weakest role that holds each permission; every stronger role holds it too.
PERMISSIONS: dict[Permission, str] = {
    "self": "viewer",
    "models.read": "viewer",
    "deployments.read": "viewer",
    "requests.read": "viewer",
    "registry.read": "viewer",
    "usage.read": "viewer",
    "inference": "developer",
    "registry.write": "developer",
    "keys.own": "developer",
    "registry.approve": "maintainer",
    "directory.read": "maintainer",
    "directory.write": "admin",
    "audit.read": "admin",
    # monitoring
    "drift.read": "viewer",
    "quality.read": "viewer",
    "metrics.read": "viewer",
    "alerts.read": "viewer",
    "alerts.write": "maintainer",
    # experiments and evaluation
    "experiments.read": "viewer",
    "experiments.write": "developer",
}

PUBLIC_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/docs/oauth2-redirect"),
        ("GET", "/redoc"),
    }
)

_REGISTRY = "/v1/keel/registry"
_MODEL = f"{_REGISTRY}/models/{{name:path}}"
_KEYS = "/v1/keel/keys"

ROUTE_PERMISSIONS: dict[tuple[str, str], Permission] = {
    # OpenAI-compatible inference
    ("POST", "/v1/chat/completions"): "inference",
    ("POST", "/v1/completions"): "inference",
    ("POST", "/v1/embeddings"): "inference",
    ("GET", "/v1/models"): "models.read",
    ("GET", "/v1/models/{model_id:path}"): "models.read",
    # operations
    ("GET", "/v1/keel/deployments"): "deployments.read",
    ("GET", "/v1/keel/cache"): "deployments.read",
    ("GET", "/v1/keel/requests"): "requests.read",
    ("GET", "/v1/keel/requests/{request_id}"): "requests.read",
    # registry
    ("POST", f"{_REGISTRY}/models"): "registry.write",
    ("GET", f"{_REGISTRY}/models"): "registry.read",
    ("GET", _MODEL): "registry.read",
    ("POST", f"{_MODEL}/versions"): "registry.write",
    ("GET", f"{_MODEL}/versions/{{ref}}"): "registry.read",
    ("GET", f"{_MODEL}/diff"): "registry.read",
    ("GET", f"{_MODEL}/export"): "registry.read",
    # Stage aliases move only through approved promotions: the registry enforces that.
    ("POST", f"{_MODEL}/archive"): "registry.write",
    ("PUT", f"{_MODEL}/aliases/{{alias}}"): "registry.write",
    ("GET", f"{_MODEL}/aliases/history"): "registry.read",
    ("GET", f"{_MODEL}/aliases/{{alias}}/history"): "registry.read",
    ("GET", f"{_MODEL}/aliases/{{alias}}/at"): "registry.read",
    ("POST", f"{_MODEL}/promotions"): "registry.write",
    ("GET", f"{_REGISTRY}/promotions"): "registry.read",
    ("POST", f"{_REGISTRY}/promotions/{{promotion_id}}/approve"): "registry.approve",
    ("POST", f"{_REGISTRY}/promotions/{{promotion_id}}/reject"): "registry.approve",
    ("PUT", f"{_MODEL}/gates/{{stage}}"): "registry.approve",
    ("POST", f"{_MODEL}/versions/{{version}}/evaluations"): "registry.write",
    ("POST", "/v1/keel/lineage/links"): "registry.write",
    ("GET", "/v1/keel/lineage/{kind}/{entity_id:path}"): "registry.read",
    # identities and keys
    ("GET", "/v1/keel/whoami"): "self",
    ("GET", "/v1/keel/orgs"): "directory.read",
    ("POST", "/v1/keel/orgs"): "directory.write",
    ("GET", "/v1/keel/teams"): "directory.read",
    ("POST", "/v1/keel/teams"): "directory.write",
    ("GET", "/v1/keel/teams/{name}"): "directory.read",
    ("PATCH", "/v1/keel/teams/{name}"): "directory.write",
    ("GET", "/v1/keel/users"): "directory.read",
    ("POST", "/v1/keel/users"): "directory.write",
    ("GET", "/v1/keel/users/{name}"): "directory.read",
    ("PATCH", "/v1/keel/users/{name}"): "directory.write",
    ("GET", _KEYS): "keys.own",
    ("POST", _KEYS): "keys.own",
    ("GET", f"{_KEYS}/{{key_id}}"): "keys.own",
    ("POST", f"{_KEYS}/{{key_id}}/revoke"): "keys.own",
    ("POST", f"{_KEYS}/{{key_id}}/rotate"): "keys.own",
    # quotas and audit
    ("GET", "/v1/keel/usage"): "usage.read",
    ("GET", "/v1/keel/audit"): "audit.read",
    ("GET", "/v1/keel/audit/export"): "audit.read",
    ("POST", "/v1/keel/audit/verify"): "audit.read",
    # monitoring: metrics
    ("GET", "/metrics"): "metrics.read",
    # monitoring: traces
    ("GET", "/v1/keel/requests/{request_id}/trace"): "requests.read",
    # monitoring: feedback and quality
    # Posting feedback is an inference-class route: an application's inference key sends its
    # users' thumbs. Reading it back follows the request records.
    ("POST", "/v1/keel/feedback"): "inference",
    ("GET", "/v1/keel/feedback"): "requests.read",
    ("GET", "/v1/keel/quality"): "quality.read",
    # monitoring: drift
    ("GET", "/v1/keel/drift/{name:path}"): "drift.read",
    ("GET", "/v1/keel/drift/{name:path}/history"): "drift.read",
    # monitoring: alerts
    ("GET", "/v1/keel/alerts"): "alerts.read",
    ("GET", "/v1/keel/alerts/history"): "alerts.read",
    ("GET", "/v1/keel/alerts/deliveries"): "alerts.read",
    ("GET", "/v1/keel/alerts/rules"): "alerts.read",
    ("POST", "/v1/keel/alerts/rules"): "alerts.write",
    ("GET", "/v1/keel/alerts/rules/{name}"): "alerts.read",
    ("DELETE", "/v1/keel/alerts/rules/{name}"): "alerts.write",
    ("POST", "/v1/keel/alerts/rules/{name}/disable"): "alerts.write",
    ("POST", "/v1/keel/alerts/rules/{name}/enable"): "alerts.write",
    # experiments: tracking
    ("GET", "/v1/keel/experiments"): "experiments.read",
    ("POST", "/v1/keel/experiments"): "experiments.write",
    ("GET", "/v1/keel/runs"): "experiments.read",
    ("POST", "/v1/keel/runs"): "experiments.write",
    ("GET", "/v1/keel/runs/compare"): "experiments.read",
    ("GET", "/v1/keel/runs/{run_id}"): "experiments.read",
    ("POST", "/v1/keel/runs/{run_id}/log"): "experiments.write",
    ("POST", "/v1/keel/runs/{run_id}/finish"): "experiments.write",
    ("GET", "/v1/keel/runs/{run_id}/metrics"): "experiments.read",
    ("POST", "/v1/keel/runs/{run_id}/artifacts"): "experiments.write",
    ("GET", "/v1/keel/runs/{run_id}/artifacts/{name:path}"): "experiments.read",
    ("POST", "/v1/keel/runs/{run_id}/inputs"): "experiments.write",
    ("POST", "/v1/keel/runs/{run_id}/model-configs"): "experiments.write",
    # experiments: datasets and prompts
    ("POST", "/v1/keel/datasets"): "experiments.write",
    ("GET", "/v1/keel/datasets"): "experiments.read",
    ("GET", "/v1/keel/datasets/{name}"): "experiments.read",
    ("GET", "/v1/keel/datasets/{name}/versions/{ref}"): "experiments.read",
    ("GET", "/v1/keel/datasets/{name}/versions/{ref}/rows"): "experiments.read",
    ("POST", "/v1/keel/prompts"): "experiments.write",
    ("GET", "/v1/keel/prompts"): "experiments.read",
    ("GET", "/v1/keel/prompts/{name}"): "experiments.read",
    ("GET", "/v1/keel/prompts/{name}/versions/{ref}"): "experiments.read",
    ("POST", "/v1/keel/prompts/{name}/render"): "experiments.read",
    ("PUT", "/v1/keel/prompts/{name}/aliases/{alias}"): "experiments.write",
    ("GET", "/v1/keel/prompts/{name}/aliases/history"): "experiments.read",
    ("GET", "/v1/keel/scorers"): "experiments.read",
    # Model-backed scorers call models as the caller: the same permission as any call.
    ("POST", "/v1/keel/scorers/score"): "inference",
}

_INFERENCE_PERMISSIONS = frozenset({"inference", "models.read"})


def permission_for(method: str, path: str) -> Permission | None:
    """The permission a route template needs; None for an unlisted route (admins only)."""
    return ROUTE_PERMISSIONS.get((method, path))


def minimum_role(permission: Permission | None) -> str:
    return "admin" if permission is None else PERMISSIONS[permission]


def role_allows(role: str, permission: Permission | None) -> bool:
    return role in ROLES and role_rank(role) <= role_rank(minimum_role(permission))


def route_class(permission: Permission | None) -> RouteClass:
    """Keys can be narrowed to inference routes or to management routes."""
    return "inference" if permission in _INFERENCE_PERMISSIONS else "management"
