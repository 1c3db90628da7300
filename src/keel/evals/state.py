"""Resume state: every finished case, so that running a suite again skips it and never pays
for it twice.

The state is a JSON-lines file on the machine that runs the suite (the caller pays for the
calls, so the caller keeps the receipts): by default `$KEEL_HOME/evals/<suite>-<digest>.jsonl`.
Each finished case is one line, appended and flushed as soon as it is scored; a run killed
mid-write leaves at most one torn last line, which is ignored. A case's key is the digest of
(suite digest, case id, model, prompt version, request params): change any of them and the case
runs again, change nothing and it is read back.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from keel.evals.suite import canonical_digest

__all__ = ["CaseRecord", "ResumeState", "case_key", "default_state_path"]


def case_key(
    suite_digest: str, case_id: str, model: str, prompt_version: str, params: dict[str, Any]
) -> str:
    return canonical_digest([suite_digest, case_id, model, prompt_version, params])[:32]


def default_state_path(home: Path, suite_name: str, suite_digest: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in suite_name)[:80]
    return home.expanduser() / "evals" / f"{safe}-{suite_digest[:12]}.jsonl"


@dataclass
class CaseRecord:
    """One finished case: the answer, what it cost and how each scorer judged it."""

    key: str
    case_id: str
    model: str
    prompt: str
    prompt_version: str
    output: str
    expected: Any = None
    latency_s: float = 0.0
    cost_usd: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    request_id: str | None = None
    environment: str | None = None
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CaseRecord:
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})


class ResumeState:
    """The finished cases of one suite, read from and appended to `path` (None: in memory)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._records: dict[str, CaseRecord] = {}
        self._lock = threading.Lock()
        self._torn = False
        if path is not None and path.exists():
            text = path.read_text(encoding="utf-8")
            # A torn last line must not swallow the next record appended after it.
            self._torn = bool(text) and not text.endswith("\n")
            for line in text.splitlines():
                try:
                    record = CaseRecord.from_json(json.loads(line))
                except (ValueError, TypeError):
                    continue  # a torn last line from an interrupted run
                self._records[record.key] = record

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str) -> CaseRecord | None:
        return self._records.get(key)

    def add(self, record: CaseRecord) -> None:
        with self._lock:
            self._records[record.key] = record
            if self.path is None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps(record.to_json(), default=str) + "\n"
            if self._torn:
                line, self._torn = "\n" + line, False
            # Flushed to the OS per case: a killed process loses nothing it finished.
            with self.path.open("a", encoding="utf-8") as file:
                file.write(line)
