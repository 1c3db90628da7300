"""Fake alert receivers on loopback, each checking the payload format it is sent:

- Slack incoming webhook: `{"text": str, "blocks": [...]}` with known block types;
- signed JSON webhook: recomputes HMAC-SHA256 over `<timestamp>.<raw body>` with its own copy
  of the secret and refuses a wrong signature or a stale timestamp (401);
- Jira REST API v2: basic auth (email + API token), `POST /rest/api/2/issue` with the fields
  Jira requires, `POST /rest/api/2/issue/{key}/comment`;
- a receiver that never answers in time, and one that fails with 500.

Every accepted request is kept in order, so tests assert on exactly what arrived.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SLACK_BLOCK_TYPES = {"header", "section", "context", "divider", "actions"}
REPLAY_WINDOW_S = 300


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class AlertReceivers:
    webhook_secret: str
    jira_email: str
    jira_token: str
    slack: list[Received] = field(default_factory=list)
    webhook: list[Received] = field(default_factory=list)
    jira_issues: list[Received] = field(default_factory=list)
    jira_comments: list[Received] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    slow_calls: int = 0
    failing_calls: int = 0
    slow_for_s: float = 30.0

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/slack/hook", self._slack, methods=["POST"]),
                Route("/webhook", self._webhook, methods=["POST"]),
                Route("/rest/api/2/issue", self._jira_issue, methods=["POST"]),
                Route("/rest/api/2/issue/{key}/comment", self._jira_comment, methods=["POST"]),
                Route("/slow", self._slow, methods=["POST"]),
                Route("/failing", self._failing, methods=["POST"]),
            ]
        )

    def _refuse(self, reason: str, status: int = 400) -> Response:
        self.refused.append(reason)
        return JSONResponse({"error": reason}, status_code=status)

    async def _slack(self, request: Request) -> Response:
        body = json.loads(await request.body())
        if not isinstance(body.get("text"), str) or not body["text"]:
            return self._refuse("slack: no text")
        blocks = body.get("blocks")
        if not isinstance(blocks, list) or not blocks:
            return self._refuse("slack: no blocks")
        for block in blocks:
            if block.get("type") not in SLACK_BLOCK_TYPES:
                return self._refuse(f"slack: unknown block type {block.get('type')}")
            if block["type"] == "header" and len(block["text"]["text"]) > 150:
                return self._refuse("slack: header over 150 characters")
        self.slack.append(Received(request.url.path, dict(request.headers), body))
        return Response("ok")

    async def _webhook(self, request: Request) -> Response:
        raw = await request.body()
        timestamp = request.headers.get("x-keel-timestamp", "")
        signature = request.headers.get("x-keel-signature", "")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > REPLAY_WINDOW_S:
            return self._refuse("webhook: stale or missing timestamp", 401)
        expected = hmac.new(
            self.webhook_secret.encode(), timestamp.encode() + b"." + raw, hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(signature, f"sha256={expected}"):
            return self._refuse("webhook: bad signature", 401)
        if request.headers.get("content-type") != "application/json":
            return self._refuse("webhook: not JSON")
        self.webhook.append(Received(request.url.path, dict(request.headers), json.loads(raw)))
        return Response(status_code=204)

    def _jira_authorized(self, request: Request) -> bool:
        expected = base64.b64encode(f"{self.jira_email}:{self.jira_token}".encode()).decode()
        return request.headers.get("authorization") == f"Basic {expected}"

    async def _jira_issue(self, request: Request) -> Response:
        if not self._jira_authorized(request):
            return self._refuse("jira: bad credentials", 401)
        body = json.loads(await request.body())
        fields = body.get("fields", {})
        for name in ("project", "issuetype", "summary", "description"):
            if name not in fields:
                return self._refuse(f"jira: missing field {name}")
        if not isinstance(fields["project"].get("key"), str):
            return self._refuse("jira: project.key")
        if not isinstance(fields["issuetype"].get("name"), str):
            return self._refuse("jira: issuetype.name")
        if not isinstance(fields["summary"], str) or len(fields["summary"]) > 255:
            return self._refuse("jira: summary")
        labels = fields.get("labels", [])
        if any(" " in label for label in labels):
            return self._refuse("jira: a label holds a space")
        self.jira_issues.append(Received(request.url.path, dict(request.headers), body))
        number = len(self.jira_issues)
        key = f"{fields['project']['key']}-{number}"
        return JSONResponse(
            {"id": str(10000 + number), "key": key, "self": f"/rest/api/2/issue/{key}"},
            status_code=201,
        )

    async def _jira_comment(self, request: Request) -> Response:
        if not self._jira_authorized(request):
            return self._refuse("jira: bad credentials", 401)
        key = request.path_params["key"]
        known = {
            f"{issue.body['fields']['project']['key']}-{n + 1}"
            for n, issue in enumerate(self.jira_issues)
        }
        if key not in known:
            return self._refuse(f"jira: no issue {key}", 404)
        body = json.loads(await request.body())
        if not isinstance(body.get("body"), str) or not body["body"]:
            return self._refuse("jira: comment body")
        self.jira_comments.append(Received(request.url.path, dict(request.headers), body))
        return JSONResponse({"id": str(len(self.jira_comments))}, status_code=201)

    async def _slow(self, request: Request) -> Response:
        self.slow_calls += 1
        await asyncio.sleep(self.slow_for_s)
        return Response("too late")

    async def _failing(self, request: Request) -> Response:
        self.failing_calls += 1
        return Response("broken", status_code=500)
