"""`POST /v1/keel/feedback` and `GET /v1/keel/feedback` over HTTP, on SQLite and PostgreSQL:
one row per (request, source, name), who may post on which request, and bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.monitoring.feedback_helpers import MODEL, Served, database_url_for, governed


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url_for(request, tmp_path)


@pytest.fixture
async def served(tmp_path: Path, fake_openai_url: str, database_url: str) -> AsyncIterator[Served]:
    async with governed(tmp_path, fake_openai_url, database_url) as found:
        yield found


async def _quality(served: Served) -> dict[str, object]:
    response = await served.get("admin", "/v1/keel/quality", model=MODEL, window="1h")
    assert response.status_code == 200, response.text
    overall: dict[str, object] = response.json()["overall"]
    return overall


async def test_a_second_post_with_the_same_triple_replaces_the_first(served: Served) -> None:
    request_id = await served.chat("ana")
    first = await served.post("ana", {"request_id": request_id, "thumbs": "up"})
    assert first.status_code == 201, first.text
    assert first.json()["replaced"] is False
    assert first.json()["source"] == "human" and first.json()["name"] == "default"
    again = await served.post(
        "ana", {"request_id": request_id, "thumbs": "down", "comment": "wrong city"}
    )
    assert again.status_code == 200, again.text
    assert again.json()["replaced"] is True
    judge = {"request_id": request_id, "thumbs": "up", "source": "llm_judge", "name": "helpful"}
    assert (await served.post("ana", judge)).status_code == 201

    listing = await served.get("ana", "/v1/keel/feedback", request_id=request_id)
    assert listing.status_code == 200
    rows = listing.json()["data"]
    assert [(row["source"], row["name"], row["thumbs"]) for row in rows] == [
        ("human", "default", "down"),
        ("llm_judge", "helpful", "up"),
    ]
    assert rows[0]["comment"] == "wrong city"
    assert rows[0]["model"] == MODEL and rows[0]["created_by"] == "ana"
    # Only the latest of each triple counts: human down (wrong), judge up (right).
    overall = await _quality(served)
    assert (overall["count"], overall["correct"], overall["accuracy"]) == (2, 1, 0.5)

    # Replacing thumbs by a label moves the verdict from binary to labelled.
    label = {"request_id": request_id, "label": "paris", "expected": "paris", "score": 0.8}
    assert (await served.post("ana", label)).status_code == 200
    overall = await _quality(served)
    assert (overall["count"], overall["correct"], overall["labelled"]) == (2, 2, 1)
    assert overall["per_class"] == {
        "paris": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    }
    # A score or a comment alone carries no verdict: the human row leaves the aggregates.
    assert (await served.post("ana", {"request_id": request_id, "score": 0.1})).status_code == 200
    overall = await _quality(served)
    assert (overall["count"], overall["correct"], overall["labelled"]) == (1, 1, 0)


async def test_who_may_post_and_read_feedback_on_which_request(served: Served) -> None:
    ml_request = await served.chat("ana")
    thumbs = {"request_id": ml_request, "thumbs": "up"}

    other_team = await served.post("ben", thumbs)
    assert other_team.status_code == 403
    assert other_team.json()["error"]["code"] == "request_not_visible"
    reading = await served.get("ben", "/v1/keel/feedback", request_id=ml_request)
    assert reading.status_code == 403

    # Viewers read but cannot post; maintainers see every team's requests.
    viewer = await served.post("vic", thumbs)
    assert viewer.status_code == 403
    assert viewer.json()["error"]["code"] == "insufficient_role"
    assert (await served.get("vic", "/v1/keel/feedback", request_id=ml_request)).status_code == 200
    maintainer = await served.post("max", {**thumbs, "name": "review"})
    assert maintainer.status_code == 201, maintainer.text

    # An inference-only key posts feedback (what an application does) but reads nothing back.
    app_key = await served.post("ana-app", {**thumbs, "name": "end-user"})
    assert app_key.status_code == 201, app_key.text
    scoped = await served.get("ana-app", "/v1/keel/feedback", request_id=ml_request)
    assert scoped.status_code == 403
    assert scoped.json()["error"]["code"] == "key_scope"

    names = [
        row["name"]
        for row in (await served.get("admin", "/v1/keel/feedback", request_id=ml_request)).json()[
            "data"
        ]
    ]
    assert names == ["review", "end-user"]
    assert (await served.client.post("/v1/keel/feedback", json=thumbs)).status_code == 401


async def test_feedback_for_an_unknown_request_is_404(served: Served) -> None:
    response = await served.post("admin", {"request_id": "req_nobody", "thumbs": "up"})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["param"] == "request_id" and "not recorded yet" in error["message"]
    listing = await served.get("admin", "/v1/keel/feedback", request_id="req_nobody")
    assert listing.status_code == 404


BAD_FIELDS: list[tuple[dict[str, object], str]] = [
    ({"thumbs": "sideways"}, "thumbs"),
    ({"thumbs": True}, "thumbs"),
    ({"score": "high"}, "score"),
    ({"score": True}, "score"),
    ({"label": 3, "expected": "3"}, "label"),
    ({"label": "cat"}, "expected"),
    ({"expected": "cat"}, "label"),
    ({"label": "", "expected": "cat"}, "label"),
    ({}, "thumbs"),
    ({"thumbs": "up", "source": "robot"}, "source"),
    ({"thumbs": "up", "name": ""}, "name"),
    ({"thumbs": "up", "name": "x" * 256}, "name"),
    ({"thumbs": "up", "rating": 5}, "rating"),
    ({"comment": "nul \x00 inside"}, "comment"),
]


async def test_bad_feedback_is_400_naming_the_field(served: Served) -> None:
    request_id = await served.chat("ana")
    for body, param in BAD_FIELDS:
        response = await served.post("ana", {"request_id": request_id, **body})
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert error["param"] == param, (body, error)
        assert error["type"] == "invalid_request_error"
        assert param in error["message"]
    # Nothing bad was stored.
    listing = await served.get("ana", "/v1/keel/feedback", request_id=request_id)
    assert listing.json()["data"] == []


async def test_bad_request_ids_and_bodies(served: Served) -> None:
    for body in ({"thumbs": "up"}, {"request_id": 7, "thumbs": "up"}, [1, 2]):
        response = await served.post("admin", body)  # type: ignore[arg-type]
        assert response.status_code == 400, response.text
    too_long = await served.post("admin", {"request_id": "r" * 65, "thumbs": "up"})
    assert too_long.json()["error"]["param"] == "request_id"
    listing = await served.get("admin", "/v1/keel/feedback")
    assert listing.status_code == 400 and listing.json()["error"]["param"] == "request_id"


async def test_feedback_on_a_request_still_queued_for_writing(
    tmp_path: Path, fake_openai_url: str, database_url: str
) -> None:
    # The recorder would hold the record for a minute: the route writes it out first.
    server = {"record_flush_interval_s": 60, "record_batch_size": 1000}
    async with governed(tmp_path, fake_openai_url, database_url, server=server) as served:
        request_id = await served.chat("ana")
        assert served.app.state.keel.recorder.pending >= 1
        response = await served.post("ana", {"request_id": request_id, "thumbs": "up"})
        assert response.status_code == 201, response.text
        assert response.json()["model"] == MODEL
