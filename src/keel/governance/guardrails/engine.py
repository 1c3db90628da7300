"""The guardrail pipeline around one request: input rules, the PII policy, output rules.

Order on the way in: the input rules in the order configured (a rule sees what earlier rules
masked), then the PII policy for the chosen deployment (external or local), then classifier
rules, which therefore see the prompt as the policy left it. On the way out: pseudonyms are
restored, then the output rules run.

Presidio is imported on first use (it takes seconds), in a worker thread, never on the event
loop; `Guardrails.load()` does it up front.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from keel.errors import ConfigError, GuardrailError
from keel.governance.guardrails.config import GuardrailRule, GuardrailsConfig, PiiConfig
from keel.governance.guardrails.pseudonyms import Pseudonyms
from keel.governance.guardrails.rules import (
    ChatFn,
    Check,
    ClassifierCheck,
    Outcome,
    PiiCheck,
    SpanCheck,
    build_check,
    selects,
)
from keel.governance.guardrails.spans import count, masked, pseudonymized
from keel.governance.guardrails.streaming import StreamRestorer
from keel.governance.guardrails.texts import (
    Slot,
    answer_slots,
    request_slots,
    tool_argument_slots,
)

if TYPE_CHECKING:
    from keel.governance.guardrails.pii import PiiMasker

__all__ = ["GuardrailBlocked", "Guardrails", "Screening"]

StageName = Literal["input", "output"]
AnyCheck = Check | ClassifierCheck
# Above this many characters, the analysis runs in a worker thread rather than on the event
# loop: a 2 KB prompt takes about a millisecond, less than a thread hand-off's jitter.
INLINE_CHARS = 4096


@dataclass(eq=False)
class Screening:
    """What screening decided for one request. `decisions` are safe to store: counts and
    entity types, never matched text. `pseudonyms` must stay in memory."""

    team: str | None = None
    model: str = ""
    decisions: list[dict[str, Any]] = field(default_factory=list)
    pseudonyms: Pseudonyms = field(default_factory=Pseudonyms)

    @property
    def warnings(self) -> list[str]:
        """Rules with action `warn` that matched, for the gateway to tell the client."""
        return [d["rule"] for d in self.decisions if d["action"] == "warn"]

    def record(
        self,
        stage: StageName,
        rule: str,
        kind: str,
        action: str,
        findings: dict[str, int],
        enforced: bool,
    ) -> None:
        self.decisions.append(
            {
                "stage": stage,
                "rule": rule,
                "kind": kind,
                "action": action,
                "findings": dict(findings),
                "enforced": enforced,
            }
        )


class GuardrailBlocked(GuardrailError):
    """A `GuardrailError` that also carries what screening had decided, the block included."""

    def __init__(self, message: str, *, rule: str, decisions: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.rule = rule
        self.decisions = decisions


class Guardrails:
    def __init__(
        self,
        pii: PiiConfig,
        config: GuardrailsConfig,
        chat: ChatFn | None = None,
        *,
        inline_chars: int = INLINE_CHARS,
    ) -> None:
        self.pii = pii
        self.config = config
        self.inline_chars = inline_chars
        self._masker: PiiMasker | None = None
        self._lock = threading.Lock()
        known = pii.known_entities()
        self._checks: list[tuple[GuardrailRule, AnyCheck]] = []
        for rule in config.rules:
            unknown = sorted(set(rule.entities or ()) - known)
            if rule.kind == "pii" and unknown:
                raise ConfigError(
                    f"guardrails: rule {rule.name!r}: no recognizer for {', '.join(unknown)}; "
                    "add one under pii.recognizers"
                )
            try:
                check = build_check(rule, self.masker, pii.detected_entities(), chat)
            except ValueError as exc:
                raise ConfigError(f"guardrails: {exc}") from exc
            self._checks.append((rule, check))
        self._active = bool(config.rules) or pii.policy_actions() != {"allow"}

    @property
    def active(self) -> bool:
        """False when there is nothing to screen: the gateway can skip screening altogether."""
        return self._active

    def masker(self) -> PiiMasker:
        """The shared Presidio analyzer, built on first use."""
        if self._masker is None:
            with self._lock:
                if self._masker is None:
                    from keel.governance.guardrails.pii import PiiMasker

                    self._masker = PiiMasker(self.pii)
        return self._masker

    @property
    def needs_analyzer(self) -> bool:
        pii_rules = any(isinstance(check, PiiCheck) for _, check in self._checks)
        return self.pii.store == "mask" or pii_rules or self.pii.policy_actions() != {"allow"}

    @property
    def loaded(self) -> bool:
        """Whether screening can run at full speed (the analyzer is built, or not needed)."""
        return self._masker is not None or not self.needs_analyzer

    def load(self) -> None:
        """Import Presidio and build the analyzer now, if anything will need it. Blocking (a
        few seconds the first time in a process): call it in a thread at start-up."""
        if self.needs_analyzer:
            self.masker()

    def mask_for_storage(self, text: str) -> str:
        """`text` with PII masked, for what Keel stores; unchanged when `pii.store` is off."""
        if self.pii.store == "off" or not text:
            return text
        return masked(text, self.masker().analyze(text))

    def stream_restorer(self, screening: Screening) -> StreamRestorer:
        return StreamRestorer(screening.pseudonyms)

    async def screen_request(
        self, request: Any, *, team: str | None, model: str, external: bool
    ) -> Screening:
        """Runs the input rules and the PII policy over `request`, masking or pseudonymizing it
        in place. Raises `GuardrailBlocked` (a GuardrailError) when something blocks it."""
        screening = Screening(team=team, model=model)
        if not self._active:
            return screening
        side = "outbound" if external else "local"
        action = self._policy_action(side, team, model)
        checks = self._selected("input", team, model)
        if action == "allow" and not checks:
            return screening
        slots = request_slots(request)
        texts = [slot.read() for slot in slots]
        if not any(texts):
            return screening
        policy = (f"pii.{side}", action) if action != "allow" else None

        def cpu_bound() -> list[str]:
            screened = self._run(screening, "input", checks, texts, enforce=True)
            return self._apply_policy(screening, policy, screened) if policy else screened

        needs_presidio = policy is not None or any(isinstance(c, PiiCheck) for _, c in checks)
        screened = await self._cpu(cpu_bound, texts, needs_presidio)
        await self._classify(screening, "input", checks, screened, enforce=True)
        _write_back(slots, texts, screened)
        return screening

    async def screen_response(self, screening: Screening, response: dict[str, Any]) -> None:
        """Restores pseudonyms in a chat.completion or text_completion, then runs the output
        rules: block raises `GuardrailBlocked`, mask rewrites the answer in place."""
        if not self._active:
            return
        slots = answer_slots(response)
        if screening.pseudonyms:
            for slot in slots:
                slot.write(screening.pseudonyms.restore(slot.read()))
            for slot in tool_argument_slots(response):
                slot.write(screening.pseudonyms.restore_in_json(slot.read()))
        checks = self._selected("output", screening.team, screening.model)
        if not checks or not slots:
            return
        texts = [slot.read() for slot in slots]
        screened = await self._screen_output(screening, checks, texts, enforce=True)
        _write_back(slots, texts, screened)

    async def screen_streamed_output(self, screening: Screening, text: str) -> None:
        """The output rules over a streamed answer, assembled as it was sent. The client has it
        already: block and mask are recorded with "enforced": false."""
        if not self._active or not text:
            return
        checks = self._selected("output", screening.team, screening.model)
        if checks:
            await self._screen_output(screening, checks, [text], enforce=False)

    async def _screen_output(
        self,
        screening: Screening,
        checks: list[tuple[GuardrailRule, AnyCheck]],
        texts: list[str],
        *,
        enforce: bool,
    ) -> list[str]:
        def cpu_bound() -> list[str]:
            return self._run(screening, "output", checks, texts, enforce=enforce)

        needs_presidio = any(isinstance(check, PiiCheck) for _, check in checks)
        screened = await self._cpu(cpu_bound, texts, needs_presidio)
        await self._classify(screening, "output", checks, screened, enforce=enforce)
        return screened

    def _policy_action(self, side: str, team: str | None, model: str) -> str:
        for override in self.pii.overrides:
            if selects(override.teams, override.models, team, model):
                chosen = getattr(override, side)
                # The first matching override decides; a side it leaves unset keeps the default.
                return str(chosen) if chosen is not None else str(getattr(self.pii, side))
        return str(getattr(self.pii, side))

    def _selected(
        self, stage: StageName, team: str | None, model: str
    ) -> list[tuple[GuardrailRule, AnyCheck]]:
        return [
            (rule, check)
            for rule, check in self._checks
            if rule.applies_to(stage) and selects(rule.teams, rule.models, team, model)
        ]

    async def _cpu(
        self, work: Callable[[], list[str]], texts: list[str], presidio: bool
    ) -> list[str]:
        cold = presidio and self._masker is None
        if cold or sum(map(len, texts)) > self.inline_chars:
            return await asyncio.to_thread(work)
        return work()

    def _run(
        self,
        screening: Screening,
        stage: StageName,
        checks: list[tuple[GuardrailRule, AnyCheck]],
        texts: list[str],
        *,
        enforce: bool,
    ) -> list[str]:
        for rule, check in checks:
            if isinstance(check, Check):
                outcome = check.run(texts, stage)
                if outcome is not None:
                    texts = self._act(screening, stage, rule, check, outcome, texts, enforce)
        return texts

    async def _classify(
        self,
        screening: Screening,
        stage: StageName,
        checks: list[tuple[GuardrailRule, AnyCheck]],
        texts: list[str],
        *,
        enforce: bool,
    ) -> None:
        classifiers = [(r, c) for r, c in checks if isinstance(c, ClassifierCheck)]
        if not classifiers:
            return
        outcomes = await asyncio.gather(*(check.run(texts, stage) for _, check in classifiers))
        for (rule, check), outcome in zip(classifiers, outcomes, strict=True):
            if outcome is not None:
                self._act(screening, stage, rule, check, outcome, texts, enforce)

    def _act(
        self,
        screening: Screening,
        stage: StageName,
        rule: GuardrailRule,
        check: AnyCheck,
        outcome: Outcome,
        texts: list[str],
        enforce: bool,
    ) -> list[str]:
        acts = enforce and not outcome.failed
        recorded_only = rule.action in ("warn", "log") and not outcome.failed
        screening.record(
            stage, rule.name, rule.kind, rule.action, outcome.findings, acts or recorded_only
        )
        if not acts:
            return texts
        if rule.action == "block":
            where = "request" if stage == "input" else "answer"
            raise GuardrailBlocked(
                f"Blocked by guardrail {rule.name!r} ({rule.kind}) on the {where}: "
                f"{outcome.reason}.",
                rule=rule.name,
                decisions=screening.decisions,
            )
        if rule.action == "mask" and isinstance(check, SpanCheck) and outcome.spans is not None:
            return [
                check.replace(text, spans) if spans else text
                for text, spans in zip(texts, outcome.spans, strict=True)
            ]
        return texts

    def _apply_policy(
        self, screening: Screening, policy: tuple[str, str], texts: list[str]
    ) -> list[str]:
        name, action = policy
        found = self.masker().analyze_all(texts)
        findings = count(span for spans in found for span in spans)
        if not findings:
            return texts
        screening.record("input", name, "pii", action, findings, True)
        if action == "block":
            listing = ", ".join(f"{entity} ({n})" for entity, n in sorted(findings.items()))
            target = "an external provider" if name == "pii.outbound" else "a local model"
            raise GuardrailBlocked(
                f"Blocked by the PII policy ({name}) on the request: {listing}; "
                f"this request may not send PII to {target}.",
                rule=name,
                decisions=screening.decisions,
            )
        if action == "mask":
            return [masked(text, spans) for text, spans in zip(texts, found, strict=True)]
        return [
            pseudonymized(text, spans, screening.pseudonyms)
            for text, spans in zip(texts, found, strict=True)
        ]


def _write_back(slots: list[Slot], before: list[str], after: list[str]) -> None:
    for slot, old, new in zip(slots, before, after, strict=True):
        if new is not old and new != old:
            slot.write(new)
