"""PII detection and masking with the real Presidio analyzer (pattern recognizers, no model)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import tldextract

from keel.governance.guardrails import PiiConfig, PiiMasker, Pseudonyms, StreamRestorer
from keel.governance.guardrails.config import BUILTIN_ENTITIES, DEFAULT_ENTITIES
from keel.governance.guardrails.recognizers import OfflineEmailRecognizer, build_analyzer

OPENAI_KEY = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"
SAMPLES = {
    "EMAIL_ADDRESS": "jane.doe@example.co.uk",
    "PHONE_NUMBER": "+1 415-555-0132",
    "CREDIT_CARD": "4111 1111 1111 1111",
    "IBAN_CODE": "DE89 3704 0044 0532 0130 00",
    "IP_ADDRESS": "203.0.113.77",
    "OPENAI_API_KEY": OPENAI_KEY,
    "ANTHROPIC_API_KEY": "sk-ant-api03-" + "x" * 40,
    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "GITHUB_TOKEN": "ghp_" + "a1B2c3D4e5" * 4,
    "SLACK_TOKEN": "xoxb-1234567890-abcdefghij",
    "KEEL_API_KEY": "keel_sk_" + "Zk3-_q" * 7,
}


@pytest.fixture(scope="module")
def masker() -> PiiMasker:
    return PiiMasker(PiiConfig())


@pytest.mark.parametrize("entity", sorted(SAMPLES))
def test_masks_each_builtin_entity(masker: PiiMasker, entity: str) -> None:
    value = SAMPLES[entity]
    result = masker.mask(f"Here it is: {value} — thanks.")
    assert result.text == f"Here it is: <{entity}> — thanks."
    assert result.findings == {entity: 1}


def test_masks_a_mixed_prompt_and_counts_without_values(masker: PiiMasker) -> None:
    text = (
        "Mail maria@example.com or john@contoso.org, call (212) 555-0199. Card 4111 1111 1111 "
        "1111, IBAN DE89 3704 0044 0532 0130 00, from 192.168.10.24."
    )
    result = masker.mask(text)
    assert result.findings == {
        "EMAIL_ADDRESS": 2,
        "PHONE_NUMBER": 1,
        "CREDIT_CARD": 1,
        "IBAN_CODE": 1,
        "IP_ADDRESS": 1,
    }
    for value in ("maria@", "contoso", "555-0199", "4111", "DE89", "192.168"):
        assert value not in result.text
    assert masker.mask(result.text).text == result.text  # a retried record batch masks twice


@pytest.mark.parametrize(
    "text",
    [
        "The period ran from 2024-03-01 to 2024-03-31.",
        "Order ORD-2024-000123 shipped.",
        "The total was 1,249.99 USD for 3 items.",
        "Version 10.4.2.1 is out.",  # a dotted quad, but not a phone number either way
        "Invalid card 4111 1111 1111 1112 fails the Luhn check.",
    ],
)
def test_leaves_lookalikes_alone(masker: PiiMasker, text: str) -> None:
    findings = masker.mask(text).findings
    assert "PHONE_NUMBER" not in findings and "CREDIT_CARD" not in findings


def test_bearer_tokens_keep_the_scheme_and_pem_keys_go_whole(masker: PiiMasker) -> None:
    header = "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.signature"
    assert masker.mask(header).text == "Authorization: Bearer <BEARER_TOKEN>"
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\nabc==\n-----END RSA PRIVATE KEY-----"
    assert masker.mask(f"key:\n{pem}\nend").text == "key:\n<PRIVATE_KEY>\nend"
    assert masker.mask("-----BEGIN PRIVATE KEY-----\nMIIE").text == "<PRIVATE_KEY>\nMIIE"


def test_secrets_are_case_sensitive(masker: PiiMasker) -> None:
    assert masker.mask("akiaiosfodnn7example").findings == {}


def test_defaults_leave_urls_and_national_ids_to_configuration(masker: PiiMasker) -> None:
    assert "URL" not in DEFAULT_ENTITIES and "US_SSN" not in DEFAULT_ENTITIES
    text = "See https://docs.example.com/guide. My SSN is 536-22-8726."
    assert masker.mask(text).text == text
    opted_in = masker.mask(text, entities=["URL", "US_SSN"])
    assert opted_in.findings == {"URL": 1, "US_SSN": 1}


def test_custom_recognizer_with_context() -> None:
    config = PiiConfig(
        recognizers=[
            {"entity": "EMPLOYEE_ID", "patterns": [r"\bEMP-\d{6}\b"], "score": 0.3},
            {
                "entity": "UK_NINO",
                "patterns": [r"\b[A-CEGHJ-PR-TW-Z]{2}\d{6}[A-D]\b"],
                "score": 0.2,
                "context": ["insurance", "NINO"],
            },
        ]
    )
    masker = PiiMasker(config)
    assert "EMPLOYEE_ID" in masker.entities and "UK_NINO" in masker.entities
    # Below the 0.4 threshold on its own; a context word before it raises the score.
    assert masker.mask("Ref AB123456C.").findings == {}
    assert masker.mask("National insurance number: AB123456C.").text == (
        "National insurance number: <UK_NINO>."
    )
    # 0.3 < threshold and no context words: not reported.
    assert masker.mask("badge EMP-123456").findings == {}
    assert PiiMasker(config.model_copy(update={"score_threshold": 0.3})).mask(
        "badge EMP-123456"
    ).findings == {"EMPLOYEE_ID": 1}


def test_unknown_entities_are_refused(masker: PiiMasker) -> None:
    with pytest.raises(ValueError, match="PERSON"):
        masker.analyze("text", ["PERSON"])


def test_registry_covers_every_builtin_entity() -> None:
    supported = set(build_analyzer().get_supported_entities("en"))
    assert supported == set(BUILTIN_ENTITIES)


def test_pseudonyms_are_stable_within_a_request(masker: PiiMasker) -> None:
    pseudonyms = Pseudonyms()
    first = masker.pseudonymize("Ask a@example.com and b@example.com.", pseudonyms)
    second = masker.pseudonymize("Then a@example.com again, or call +1 415-555-0132.", pseudonyms)
    assert first.text == "Ask <EMAIL_ADDRESS_1> and <EMAIL_ADDRESS_2>."
    assert second.text == "Then <EMAIL_ADDRESS_1> again, or call <PHONE_NUMBER_1>."
    assert dict(pseudonyms) == {
        "<EMAIL_ADDRESS_1>": "a@example.com",
        "<EMAIL_ADDRESS_2>": "b@example.com",
        "<PHONE_NUMBER_1>": "+1 415-555-0132",
    }
    answer = "I wrote to <EMAIL_ADDRESS_2> and <EMAIL_ADDRESS_1>; <UNKNOWN_1> stays."
    assert pseudonyms.restore(answer) == (
        "I wrote to b@example.com and a@example.com; <UNKNOWN_1> stays."
    )
    assert "a@example.com" not in repr(pseudonyms)


def test_restore_in_json_escapes_values() -> None:
    pseudonyms = Pseudonyms()
    placeholder = pseudonyms.placeholder("CUSTOM", 'say "hi"\\')
    restored = pseudonyms.restore_in_json(f'{{"to": "{placeholder}"}}')
    assert restored == '{"to": "say \\"hi\\"\\\\"}'


def test_analyze_all_maps_spans_back_to_each_text(masker: PiiMasker) -> None:
    texts = ["no pii here", "mail a@example.com", "", "call +1 415-555-0132 or b@example.com"]
    found = masker.analyze_all(texts)
    assert [
        [text[s.start : s.end] for s in spans] for text, spans in zip(texts, found, strict=True)
    ] == [
        [],
        ["a@example.com"],
        [],
        ["+1 415-555-0132", "b@example.com"],
    ]


def _stream(pseudonyms: Pseudonyms, chunks: list[str]) -> str:
    restorer = StreamRestorer(pseudonyms)
    return "".join(restorer.feed(chunk) for chunk in chunks) + restorer.flush()


def test_stream_restores_placeholders_split_at_every_position() -> None:
    pseudonyms = Pseudonyms()
    email = pseudonyms.placeholder("EMAIL_ADDRESS", "a@example.com")
    phone = pseudonyms.placeholder("PHONE_NUMBER", "+1 415-555-0132")
    answer = f"Write to {email}, x < y, or call {phone}<"
    expected = "Write to a@example.com, x < y, or call +1 415-555-0132<"
    for cut in range(len(answer) + 1):
        for second in range(cut, len(answer) + 1):
            chunks = [answer[:cut], answer[cut:second], answer[second:]]
            assert _stream(pseudonyms, chunks) == expected
    assert _stream(pseudonyms, list(answer)) == expected


def test_stream_holds_back_only_what_could_be_a_placeholder() -> None:
    pseudonyms = Pseudonyms()
    pseudonyms.placeholder("EMAIL_ADDRESS", "a@example.com")
    restorer = StreamRestorer(pseudonyms)
    assert restorer.feed("Hello <EMAIL_") == "Hello "
    assert restorer.feed("ADDRESS_1> and <b>") == "a@example.com and <b>"
    assert restorer.feed(" <EMAIL_ADDRESS_2") == " <EMAIL_ADDRESS_2"  # no such placeholder
    assert restorer.flush() == ""
    assert StreamRestorer(Pseudonyms()).feed("<EMAIL_") == "<EMAIL_"


def test_nothing_touches_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("network access")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    # A fresh suffix-list reader, so its first (loading) use happens under the patch.
    monkeypatch.setattr(
        OfflineEmailRecognizer,
        "_domains",
        tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None),
    )
    masker = PiiMasker(PiiConfig())
    assert masker.mask("write to someone@example.org").findings == {"EMAIL_ADDRESS": 1}
