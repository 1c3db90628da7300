"""Where alerts go: a Slack-compatible incoming webhook, a JSON webhook signed with
HMAC-SHA256, and Jira (one issue per rule, a comment on each later transition).

Each delivery is retried with exponential backoff and bounded by the notifier's timeout; what
happened ends up in `alert_deliveries`, never as an exception in the evaluator. Secrets (the
Slack URL, the webhook secret, the Jira token) are registered with `keel.secrets`, so they are
blanked from every error text that is stored or logged.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

import aiohttp

from keel import secrets
from keel.errors import ConfigError
from keel.monitoring.alerts_config import (
    JiraNotifierConfig,
    NotifierConfig,
    SlackNotifierConfig,
    WebhookNotifierConfig,
)

__all__ = [
    "DeliveryFailed",
    "DeliveryResult",
    "Notification",
    "Notifier",
    "Recipients",
    "build_notifiers",
    "deliver",
    "sign",
]

SIGNATURE_HEADER = "x-keel-signature"
TIMESTAMP_HEADER = "x-keel-timestamp"


@dataclass(frozen=True, slots=True)
class Recipients:
    """Who an alert is for: the people and teams the model's registry card names as owners,
    and any the rule adds."""

    people: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()

    def document(self) -> dict[str, list[str]]:
        return {"people": list(self.people), "teams": list(self.teams)}


@dataclass(frozen=True, slots=True)
class Notification:
    history_id: int
    rule: str
    kind: Literal["firing", "resolved"]
    severity: str
    metric: str
    condition: str
    op: str
    threshold: float
    value: float | None
    observed: float | None
    window_s: float
    for_s: float
    filters: dict[str, str]
    since: datetime
    at: datetime
    description: str | None = None
    model_version: str | None = None
    recipients: Recipients = field(default_factory=Recipients)

    def summary(self) -> str:
        scope = ", ".join(f"{name} {value}" for name, value in self.filters.items())
        measured = "no data" if self.observed is None else f"{self.observed:.6g}"
        what = {
            "threshold": self.metric,
            "rate_of_change": f"change of {self.metric}",
            "anomaly": f"z-score of {self.metric}",
        }[self.condition]
        text = (
            f"[{self.kind.upper()}] {self.rule} ({self.severity}): {what} is {measured}, "
            f"rule {self.op} {self.threshold:g} over {self.window_s:g}s"
        )
        return f"{text} [{scope}]" if scope else text

    def document(self) -> dict[str, Any]:
        return {
            "event": f"alert.{self.kind}",
            "id": self.history_id,
            "rule": self.rule,
            "state": self.kind,
            "severity": self.severity,
            "metric": self.metric,
            "condition": self.condition,
            "op": self.op,
            "threshold": self.threshold,
            "observed": self.observed,
            "value": self.value,
            "window_s": self.window_s,
            "for_s": self.for_s,
            "filters": self.filters,
            "since": self.since.isoformat(),
            "at": self.at.isoformat(),
            "description": self.description,
            "model_version": self.model_version,
            "summary": self.summary(),
            "recipients": self.recipients.document(),
        }


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    status: Literal["delivered", "failed"]
    attempts: int
    http_status: int | None = None
    error: str | None = None
    reference: str | None = None


class DeliveryFailed(Exception):
    def __init__(self, message: str, *, http_status: int | None = None, retry: bool) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.retry = retry


class Notifier(Protocol):
    name: str
    kind: str
    config: NotifierConfig

    async def send(
        self, http: aiohttp.ClientSession, notification: Notification, ticket: str | None
    ) -> str | None:
        """Deliver once; a reference to keep (a Jira issue key) or None. Raises
        DeliveryFailed."""
        ...


async def deliver(
    notifier: Notifier,
    http: aiohttp.ClientSession,
    notification: Notification,
    ticket: str | None,
) -> DeliveryResult:
    """Send with retries and backoff; never raises."""
    config = notifier.config
    delay = config.backoff_initial_s
    last: DeliveryFailed | None = None
    for attempt in range(1, config.max_attempts + 1):
        try:
            reference = await asyncio.wait_for(
                notifier.send(http, notification, ticket), timeout=config.timeout_s
            )
            return DeliveryResult("delivered", attempt, reference=reference)
        except TimeoutError:
            last = DeliveryFailed(f"no answer within {config.timeout_s:g} s", retry=True)
        except DeliveryFailed as exc:
            last = exc
        except aiohttp.ClientError as exc:
            last = DeliveryFailed(f"{type(exc).__name__}: {exc}", retry=True)
        if not last.retry or attempt == config.max_attempts:
            return _failed(last, attempt)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)
    assert last is not None
    return _failed(last, config.max_attempts)


def _failed(error: DeliveryFailed, attempts: int) -> DeliveryResult:
    message = secrets.redact(str(error) or type(error).__name__)[:1000]
    return DeliveryResult("failed", attempts, http_status=error.http_status, error=message)


async def _post(
    http: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    auth: aiohttp.BasicAuth | None = None,
) -> Any:
    async with http.post(
        url, data=body, headers={"content-type": "application/json", **headers}, auth=auth
    ) as response:
        text = await response.text(errors="replace")
        if response.status >= 300:
            retry = response.status >= 500 or response.status in (408, 429)
            raise DeliveryFailed(
                f"HTTP {response.status}: {text[:300]}", http_status=response.status, retry=retry
            )
        try:
            return json.loads(text) if text.strip() else None
        except ValueError:
            return None


def _json(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# -- Slack -------------------------------------------------------------------------------------

_SLACK_USER_ID = re.compile(r"[UW][A-Z0-9]{6,}")
_EMOJI = {"firing": ":rotating_light:", "resolved": ":white_check_mark:"}


def slack_mention(owner: str) -> str:
    """Slack user ids (U…/W…) become real mentions; other names are written as @name."""
    return f"<@{owner}>" if _SLACK_USER_ID.fullmatch(owner) else f"@{owner}"


class SlackNotifier:
    kind = "slack"

    def __init__(self, config: SlackNotifierConfig) -> None:
        self.name = config.name
        self.config: NotifierConfig = config
        self._url = config.url

    def payload(self, notification: Notification) -> dict[str, Any]:
        owners = [slack_mention(person) for person in notification.recipients.people]
        owners += [f"@{team}" for team in notification.recipients.teams]
        text = notification.summary()
        if owners:
            text += f" cc {' '.join(owners)}"
        details = [
            f"*Rule:* `{notification.rule}`  *Severity:* {notification.severity}",
            f"*Metric:* `{notification.metric}` ({notification.condition}) "
            f"{notification.op} {notification.threshold:g}",
            "*Observed:* "
            + ("no data" if notification.observed is None else f"{notification.observed:.6g}"),
        ]
        if notification.filters:
            details.append(
                "*Scope:* " + ", ".join(f"{k}={v}" for k, v in notification.filters.items())
            )
        if notification.description:
            details.append(notification.description)
        header = f"{notification.kind.upper()}: {notification.rule}"[:150]
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": header}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(details)[:3000]}},
        ]
        context = f"{_EMOJI[notification.kind]} since {notification.since.isoformat()}"
        if owners:
            context += f" | owners: {' '.join(owners)}"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
        return {"text": text, "blocks": blocks}

    async def send(
        self, http: aiohttp.ClientSession, notification: Notification, ticket: str | None
    ) -> str | None:
        await _post(http, self._url, _json(self.payload(notification)), {})
        return None


# -- signed webhook ----------------------------------------------------------------------------


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256 over `<timestamp>.<raw body>`: a receiver recomputes it
    and refuses stale timestamps, so a captured request cannot be replayed later."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, "sha256")
    return f"sha256={mac.hexdigest()}"


class WebhookNotifier:
    kind = "webhook"

    def __init__(self, config: WebhookNotifierConfig, secret: str) -> None:
        self.name = config.name
        self.config: NotifierConfig = config
        self._url = config.url
        self._secret = secret

    async def send(
        self, http: aiohttp.ClientSession, notification: Notification, ticket: str | None
    ) -> str | None:
        body = _json(notification.document())
        timestamp = str(int(time.time()))
        headers = {
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
            "x-keel-event": f"alert.{notification.kind}",
            "x-keel-delivery": f"{notification.history_id}.{self.name}",
        }
        await _post(http, self._url, body, headers)
        return None


# -- Jira --------------------------------------------------------------------------------------

_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]+")


def _label(text: str) -> str:
    return _LABEL_UNSAFE.sub("-", text).strip("-")[:255]


class JiraNotifier:
    kind = "jira"

    def __init__(self, config: JiraNotifierConfig, token: str) -> None:
        self.name = config.name
        self.config: NotifierConfig = config
        self._jira = config
        self._auth = aiohttp.BasicAuth(config.email, token)
        self._api = f"{config.url.rstrip('/')}/rest/api/{config.api_version}"

    def _text(self, value: str) -> Any:
        if self._jira.api_version == 2:
            return value
        # API v3 takes Atlassian Document Format: one paragraph a line.
        return {
            "type": "doc",
            "version": 1,
            "content": [
                {"type": "paragraph", "content": [{"type": "text", "text": line}]}
                for line in value.splitlines()
                if line.strip()
            ],
        }

    def description(self, notification: Notification) -> str:
        recipients = notification.recipients
        lines = [
            notification.summary(),
            f"Rule: {notification.rule} (severity {notification.severity})",
            f"Metric: {notification.metric}, {notification.condition} "
            f"{notification.op} {notification.threshold:g}, window {notification.window_s:g}s",
            f"Since: {notification.since.isoformat()}",
        ]
        if notification.model_version:
            lines.append(f"Model: {notification.model_version}")
        if recipients.people:
            lines.append(f"Owners: {', '.join(recipients.people)}")
        if recipients.teams:
            lines.append(f"Owning teams: {', '.join(recipients.teams)}")
        if notification.description:
            lines.append(notification.description)
        return "\n".join(lines)

    def issue(self, notification: Notification) -> dict[str, Any]:
        labels = [
            "keel-alert",
            _label(f"alert-{notification.rule}"),
            _label(f"severity-{notification.severity}"),
            *(_label(f"team-{team}") for team in notification.recipients.teams),
            *(_label(label) for label in self._jira.labels),
        ]
        if "model" in notification.filters:
            labels.append(_label(f"model-{notification.filters['model']}"))
        return {
            "fields": {
                "project": {"key": self._jira.project},
                "issuetype": {"name": self._jira.issue_type},
                "summary": notification.summary()[:255],
                "description": self._text(self.description(notification)),
                "labels": [label for label in dict.fromkeys(labels) if label],
            }
        }

    async def send(
        self, http: aiohttp.ClientSession, notification: Notification, ticket: str | None
    ) -> str | None:
        if ticket is not None:
            body = {"body": self._text(self.description(notification))}
            await _post(http, f"{self._api}/issue/{ticket}/comment", _json(body), {}, self._auth)
            return ticket
        created = await _post(
            http, f"{self._api}/issue", _json(self.issue(notification)), {}, self._auth
        )
        key = created.get("key") if isinstance(created, dict) else None
        if not isinstance(key, str) or not key:
            raise DeliveryFailed("Jira created no issue key in its answer", retry=False)
        return key


def _from_env(name: str, where: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"{where}: environment variable {name} is not set")
    return value


def build_notifiers(configs: list[NotifierConfig]) -> dict[str, Notifier]:
    """The configured notifiers, their secrets read from the environment and registered as
    secrets (ConfigError naming the notifier when one is missing)."""
    built: dict[str, Notifier] = {}
    for config in configs:
        where = f"alerts.notifiers.{config.name}"
        notifier: Notifier
        if isinstance(config, SlackNotifierConfig):
            secrets.register([config.url])
            notifier = SlackNotifier(config)
        elif isinstance(config, WebhookNotifierConfig):
            secret = _from_env(config.secret_env, f"{where}.secret_env")
            secrets.register([secret])
            notifier = WebhookNotifier(config, secret)
        else:
            token = _from_env(config.api_token_env, f"{where}.api_token_env")
            secrets.register([token])
            notifier = JiraNotifier(config, token)
        built[config.name] = notifier
    return built
