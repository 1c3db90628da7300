"""Latency of PII masking, the part of a request that `pii.outbound: mask` adds.

The prompt is a ~2 KB support message with a realistic mix: two e-mail addresses, two phone
numbers, a card number, an IBAN, two IP addresses, an OpenAI key, an AWS key id, a bearer token,
and the lookalikes that must be left alone (dates, an order reference, amounts, a URL).

* `PiiMasker.mask()`: Presidio's analyzer (pattern recognizers, no spaCy model) and Keel's
  replacement, on the 2 KB string: the figure the target is for;
* split into analysis and replacement, with presidio-anonymizer's "replace" operator beside
  Keel's own replacement (when the package is installed), which is why Keel does its own;
* `pseudonymize()`, and `Guardrails.screen_request()` on a chat request carrying the same text
  over four messages (what the gateway calls);
* the cost of handing the work to a thread (`asyncio.to_thread`) against running it inline, at
  2 KB and 8 KB, which is where `Guardrails` draws the line (4 KB).

    python bench/pii_masking.py
    python bench/pii_masking.py --iterations 2000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from keel.governance.guardrails import Guardrails, GuardrailsConfig, PiiConfig, Pseudonyms
from keel.governance.guardrails.spans import masked
from keel.schemas import ChatCompletionRequest

TARGET_P50_MS = 5.0
PARAGRAPHS = [
    "Hi support team, this is Maria Gonzalez following up on ticket #48213 about my account. "
    "You can reach me at maria.gonzalez@example.com or on my mobile +1 415-555-0132; my office "
    "line is (212) 555-0199. Last week I was charged twice on my card 4111 1111 1111 1111 and "
    "the refund should go to my IBAN DE89 3704 0044 0532 0130 00 instead.",
    "I logged in from 192.168.10.24 and again from 203.0.113.77 when the error appeared on "
    "https://portal.example.com/billing/invoices?id=99812. My colleague john.smith@contoso.org "
    "had the same issue. For the integration, our developer pasted this by mistake: "
    "OPENAI_API_KEY=sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd and the AWS key "
    "AKIAIOSFODNN7EXAMPLE in the Slack channel, along with the header Authorization: Bearer "
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N. Please make sure "
    "these get rotated.",
    "The invoice total was 1,249.99 USD for the period 2024-03-01 to 2024-03-31, and the order "
    "reference is ORD-2024-000123. Could you summarise what happened, explain why the duplicate "
    "charge occurred, and draft a short apology email I can forward to my manager? Please keep "
    "the tone professional and mention the expected refund timeline of five to seven business "
    "days. Also list the steps our team should take to avoid this in future, for example "
    "enabling two-factor authentication and reviewing the API keys stored in our CI system.",
    "Thanks a lot for your help, and sorry for the long message: we have been going back and "
    "forth on this for almost two weeks now and the finance department is asking for a clear "
    "written explanation before the end of the quarter. They would also like to know whether "
    "the second charge will show up as a separate line on next month's statement, and if so, "
    "how it will be labelled. Best regards, Maria.",
]
PROMPT = "\n\n".join(PARAGRAPHS)


def timed(action: Callable[[], Any], iterations: int, warmup: int = 50) -> list[float]:
    """Milliseconds per call of `action()`, after `warmup` untimed calls."""
    for _ in range(warmup):
        action()
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def timed_async(action: Callable[[], Any], iterations: int, warmup: int = 50) -> list[float]:
    for _ in range(warmup):
        await action()
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        await action()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def report(label: str, samples: list[float], target_ms: float | None = None) -> None:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    verdict = ""
    if target_ms is not None:
        verdict = f"  target p50 <= {target_ms:g} ms: {'PASS' if p50 <= target_ms else 'FAIL'}"
    print(f"{label:<52} p50 {p50:8.3f} ms   p99 {p99:8.3f} ms   (n={len(samples)}){verdict}")


def masking(masker: Any, iterations: int) -> None:
    result = masker.mask(PROMPT)
    print(f"prompt: {len(PROMPT)} characters; found {sum(result.findings.values())}:")
    print("  " + ", ".join(f"{name} {n}" for name, n in sorted(result.findings.items())))
    report("PiiMasker.mask(), 2 KB", timed(lambda: masker.mask(PROMPT), iterations), TARGET_P50_MS)
    spans = masker.analyze(PROMPT)
    report(
        "  of which analysis (Presidio AnalyzerEngine)",
        timed(lambda: masker.analyze(PROMPT), iterations),
    )
    report("  of which replacement (Keel's)", timed(lambda: masked(PROMPT, spans), iterations))
    anonymizer_replacement(masker, iterations)
    pseudonymize = lambda: masker.pseudonymize(PROMPT, Pseudonyms())  # noqa: E731
    report("PiiMasker.pseudonymize(), 2 KB", timed(pseudonymize, iterations), TARGET_P50_MS)


def anonymizer_replacement(masker: Any, iterations: int) -> None:
    try:
        from presidio_anonymizer import AnonymizerEngine
        from presidio_anonymizer.entities import OperatorConfig, RecognizerResult
    except ImportError:
        print("  (presidio-anonymizer not installed: its replacement not measured)")
        return
    engine = AnonymizerEngine()
    results = [
        RecognizerResult(span.label, span.start, span.end, span.score)
        for span in masker.analyze(PROMPT)
    ]
    operators = {
        span.entity_type: OperatorConfig("replace", {"new_value": f"<{span.entity_type}>"})
        for span in results
    }

    def anonymize() -> None:
        engine.anonymize(text=PROMPT, analyzer_results=results, operators=operators)

    ours = masked(PROMPT, masker.analyze(PROMPT))
    theirs = engine.anonymize(text=PROMPT, analyzer_results=results, operators=operators).text
    assert ours == theirs, "the two replacements disagree"
    report("  replacement with presidio-anonymizer instead", timed(anonymize, iterations))


async def screening(iterations: int) -> None:
    guardrails = Guardrails(PiiConfig(outbound="mask"), GuardrailsConfig())
    guardrails.load()

    async def screen() -> None:
        request = ChatCompletionRequest.model_validate(
            {
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": text} for text in PARAGRAPHS],
            }
        )
        await guardrails.screen_request(request, team="web", model="gpt-4o", external=True)

    report(
        "Guardrails.screen_request(), 4 messages, 2 KB",
        await timed_async(screen, iterations),
        TARGET_P50_MS,
    )
    masker = guardrails.masker()
    for label, text in (("2 KB", PROMPT), ("8 KB", PROMPT * 4)):
        inline = timed(lambda text=text: masker.mask(text), iterations)

        async def threaded(text: str = text) -> None:
            await asyncio.to_thread(masker.mask, text)

        report(f"mask {label} inline", inline)
        report(f"mask {label} in asyncio.to_thread", await timed_async(threaded, iterations))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=500)
    args = parser.parse_args()
    cores = os.cpu_count()
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"{cores} CPU cores, load average {load} (timings on a busy machine are noisy)")
    started = time.perf_counter()
    from keel.governance.guardrails.pii import PiiMasker  # imports Presidio: timed

    masker = PiiMasker(PiiConfig())
    print(f"importing Presidio and building the analyzer: {time.perf_counter() - started:.1f} s")
    masking(masker, args.iterations)
    asyncio.run(screening(args.iterations))


if __name__ == "__main__":
    main()
