"""Quality from labelled feedback, on SQLite and PostgreSQL: every expected figure is worked
out by hand in the test from the confusion matrix it sends."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from keel.monitoring.feedback import Feedback, FeedbackStore, RequestFacts
from keel.monitoring.quality import quality_summary
from keel.monitoring.quality_gauges import QualityGauges
from keel.store import Database
from tests.monitoring.feedback_helpers import MODEL, Served, database_url_for, governed

# (label the model gave, expected label): 3 classes, 10 items.
#   expected cat  (5): cat 4, dog 1
#   expected dog  (3): dog 1, cat 2
#   expected bird (2): bird 1, dog 1
LABELLED = [
    *[("cat", "cat")] * 4,
    ("dog", "cat"),
    ("dog", "dog"),
    *[("cat", "dog")] * 2,
    ("bird", "bird"),
    ("dog", "bird"),
]
# By hand. Correct: 4 + 1 + 1 = 6 of 10.
#   cat:  predicted 6 times, 4 right -> precision 4/6, recall 4/5, F1 2(2/3)(4/5)/(2/3+4/5)=8/11
#   dog:  predicted 3 times, 1 right -> precision 1/3, recall 1/3, F1 1/3
#   bird: predicted once, right      -> precision 1,   recall 1/2, F1 2/3
PER_CLASS = {
    "cat": (4 / 6, 4 / 5, 8 / 11, 5),
    "dog": (1 / 3, 1 / 3, 1 / 3, 3),
    "bird": (1.0, 1 / 2, 2 / 3, 2),
}
PRECISION_MACRO = (4 / 6 + 1 / 3 + 1) / 3  # 2/3
RECALL_MACRO = (4 / 5 + 1 / 3 + 1 / 2) / 3  # 49/90
F1_MACRO = (8 / 11 + 1 / 3 + 2 / 3) / 3  # 19/33


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url_for(request, tmp_path)


@pytest.fixture
async def served(tmp_path: Path, fake_openai_url: str, database_url: str) -> AsyncIterator[Served]:
    async with governed(tmp_path, fake_openai_url, database_url) as found:
        yield found


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    found = Database(database_url)
    found.migrate()
    yield found
    found.dispose()


def _approx(value: float) -> object:
    return pytest.approx(value, abs=1e-12)


async def test_accuracy_precision_recall_f1_of_a_labelled_confusion_matrix(
    served: Served,
) -> None:
    ids = [await served.chat("ana") for _ in LABELLED]
    for index, (request_id, (label, expected)) in enumerate(zip(ids, LABELLED, strict=True)):
        body = {"request_id": request_id, "label": label, "expected": expected}
        if index == len(LABELLED) - 2:
            # First sent wrong, then corrected: only the latest counts.
            wrong = {**body, "label": "cat", "source": "code", "name": "triage"}
            assert (await served.post("ana", wrong)).status_code == 201
        response = await served.post("ana", {**body, "source": "code", "name": "triage"})
        assert response.status_code in (200, 201), response.text
    # Users' thumbs on three more requests: two up, one down.
    for thumbs in ("up", "up", "down"):
        request_id = await served.chat("ana")
        assert (await served.post("ana", {"request_id": request_id, "thumbs": thumbs})).is_success

    labelled = await served.get("vic", "/v1/keel/quality", model=MODEL, window="24h", source="code")
    assert labelled.status_code == 200, labelled.text
    overall = labelled.json()["overall"]
    assert (overall["count"], overall["correct"], overall["labelled"]) == (10, 6, 10)
    assert overall["accuracy"] == _approx(0.6)
    assert overall["precision_macro"] == _approx(PRECISION_MACRO)
    assert overall["recall_macro"] == _approx(RECALL_MACRO)
    assert overall["f1_macro"] == _approx(F1_MACRO)
    for label, (precision, recall, f1, support) in PER_CLASS.items():
        scores = overall["per_class"][label]
        assert scores["precision"] == _approx(precision), label
        assert scores["recall"] == _approx(recall), label
        assert scores["f1"] == _approx(f1), label
        assert scores["support"] == support, label
    assert overall["confusion"] == {
        "cat": {"cat": 4, "dog": 1},
        "dog": {"dog": 1, "cat": 2},
        "bird": {"bird": 1, "dog": 1},
    }

    # Every source: thumbs count towards accuracy (6 + 2 right of 13), not towards classes.
    everything = (await served.get("ana", "/v1/keel/quality", model=MODEL)).json()
    assert everything["window"] == "24h"
    assert (everything["overall"]["count"], everything["overall"]["correct"]) == (13, 8)
    assert everything["overall"]["accuracy"] == _approx(8 / 13)
    assert everything["overall"]["f1_macro"] == _approx(F1_MACRO)
    by_deployment = (
        await served.get("ana", "/v1/keel/quality", model=MODEL, by="deployment")
    ).json()
    assert [group["deployment"] for group in by_deployment["groups"]] == [MODEL]
    assert by_deployment["groups"][0]["count"] == 13


async def test_quality_rejects_bad_parameters(served: Served) -> None:
    cases = [
        ({"model": MODEL, "window": "soon"}, "window"),
        ({"model": MODEL, "window": "0h"}, "window"),
        ({"model": MODEL, "window": "-1h"}, "window"),
        ({"model": MODEL, "window": "999d"}, "window"),
        ({"model": MODEL, "by": "team"}, "by"),
        ({"model": MODEL, "source": "robot"}, "source"),
        ({"model": MODEL, "end": "yesterday"}, "end"),
        ({"window": "1h"}, "model"),
        ({"model": "nul\x00"}, "model"),
    ]
    for params, param in cases:
        response = await served.get("ana", "/v1/keel/quality", **params)
        assert response.status_code == 400, (params, response.text)
        assert response.json()["error"]["param"] == param, params
    # An inference-only key cannot read quality; a model nobody rated has none yet.
    scoped = await served.get("ana-app", "/v1/keel/quality", model=MODEL)
    assert scoped.status_code == 403
    empty = (await served.get("vic", "/v1/keel/quality", model="unrated")).json()["overall"]
    assert (empty["count"], empty["accuracy"], empty["f1_macro"]) == (0, None, None)


END = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)


def _facts(index: int, version: str, at: datetime, deployment: str = "d1") -> RequestFacts:
    return RequestFacts(
        request_id=f"req_{version}_{index}_{at:%d%H}",
        requested_at=at,
        model="m",
        registry_version=version,
        deployment=deployment,
    )


def _thumbs(up: bool) -> Feedback:
    return Feedback(thumbs="up" if up else "down")


async def test_quality_per_registry_version_over_a_window(served: Served) -> None:
    store = FeedbackStore(served.app.state.keel.database)
    recent = END - timedelta(minutes=20)
    old = END - timedelta(days=3)
    items = [
        # m@1 in the last day: 3 up, 1 down; m@2: 1 up, 1 down (on another deployment).
        *[(_facts(i, "m@1", recent), _thumbs(i < 3)) for i in range(4)],
        *[(_facts(i, "m@2", recent, "d2"), _thumbs(i < 1)) for i in range(2)],
        # Three days earlier, m@1: 5 down.
        *[(_facts(i, "m@1", old), _thumbs(False)) for i in range(5)],
    ]
    written = store.record_many(items, by="importer")
    assert (written.created, written.replaced) == (11, 0)

    day = await served.get(
        "vic", "/v1/keel/quality", model="m", by="registry_version", end=END.isoformat()
    )
    assert day.status_code == 200, day.text
    groups = {group["registry_version"]: group for group in day.json()["groups"]}
    assert (groups["m@1"]["count"], groups["m@1"]["accuracy"]) == (4, 0.75)
    assert (groups["m@2"]["count"], groups["m@2"]["accuracy"]) == (2, 0.5)
    assert day.json()["overall"]["accuracy"] == _approx(4 / 6)
    assert groups["m@1"]["precision_macro"] is None  # thumbs carry no classes

    week = await served.get(
        "vic", "/v1/keel/quality", model="m", window="7d", by="deployment", end=END.isoformat()
    )
    by_deployment = {group["deployment"]: group for group in week.json()["groups"]}
    assert (by_deployment["d1"]["count"], by_deployment["d1"]["correct"]) == (9, 3)
    assert (by_deployment["d2"]["count"], by_deployment["d2"]["correct"]) == (2, 1)

    # The function the alerts and drift call, with the same figures.
    database = served.app.state.keel.database
    summary = quality_summary(database, model="m", window_s=86400, end=END, registry_version="m@1")
    assert (summary["count"], summary["accuracy"], summary["per_class"]) == (4, 0.75, {})
    summary = quality_summary(database, model="m", window_s=7 * 86400, end=END)
    assert (summary["count"], summary["correct"]) == (11, 4)

    # The gauges read the same aggregates, refreshed off the scrape.
    gauges = QualityGauges(database)
    registry = CollectorRegistry()
    registry.register(gauges)
    gauges.refresh(now=END)
    text = generate_latest(registry).decode()
    assert 'keel_quality_accuracy{deployment="d1",model="m",registry_version="m@1"} 0.75' in text
    assert 'keel_quality_accuracy{deployment="d2",model="m",registry_version="m@2"} 0.5' in text
    assert (
        'keel_quality_feedback_count{deployment="d1",model="m",registry_version="m@1"} 4.0' in text
    )
    # The server registered the same collector on its own metrics registry.
    metrics = served.app.state.keel.metrics
    assert metrics is not None
    assert "# TYPE keel_quality_f1_macro gauge" in generate_latest(metrics.registry).decode()


def test_aggregates_follow_every_replacement(database: Database) -> None:
    """Many writes and rewrites of the same triples, single and bulk: the quality read from
    the aggregates equals the one worked out here from the latest feedback of each triple."""
    store = FeedbackStore(database)
    chooser = random.Random(7)
    labels = ["a", "b", "c"]
    latest: dict[tuple[str, str], Feedback] = {}
    facts = {
        f"req_{i}": RequestFacts(f"req_{i}", END - timedelta(hours=i % 5), model="m")
        for i in range(30)
    }

    def random_feedback(name: str) -> Feedback:
        kind = chooser.choice(["thumbs", "label", "score"])
        if kind == "thumbs":
            return Feedback(name=name, thumbs=chooser.choice(["up", "down"]))
        if kind == "label":
            return Feedback(
                name=name, label=chooser.choice(labels), expected=chooser.choice(labels)
            )
        return Feedback(name=name, score=chooser.random())

    for _ in range(6):
        batch = []
        for _ in range(40):
            request_id = chooser.choice(list(facts))
            item = random_feedback(chooser.choice(["x", "y"]))
            batch.append((facts[request_id], item))
            latest[(request_id, item.name)] = item
        store.record_many(batch[:20], by="t")
        for pair in batch[20:]:
            store.record(*pair, by="t")

    confusion: Counter[tuple[str, str]] = Counter()
    right = total = 0
    for item in latest.values():
        if item.label is not None and item.expected is not None:
            confusion[(item.expected, item.label)] += 1
            total += 1
            right += item.label == item.expected
        elif item.thumbs is not None:
            total += 1
            right += item.thumbs == "up"
    summary = quality_summary(database, model="m", window_s=86400, end=END)
    assert (summary["count"], summary["correct"]) == (total, right)
    assert summary["confusion"] == {
        expected: {predicted: n for (e, predicted), n in confusion.items() if e == expected}
        for expected in {e for e, _ in confusion}
    }
    for label in labels:
        predicted = sum(n for (_, p), n in confusion.items() if p == label)
        support = sum(n for (e, _), n in confusion.items() if e == label)
        hits = confusion[(label, label)]
        if predicted or support:
            assert summary["per_class"][label]["precision"] == _approx(
                hits / predicted if predicted else 0.0
            )
            assert summary["per_class"][label]["recall"] == _approx(
                hits / support if support else 0.0
            )
