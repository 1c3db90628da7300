"""Governance: identities, roles and API keys, quotas and budgets, the audit log, PII
protection and guardrails, and data residency.

Submodules are imported where they are used; this package imports nothing heavy itself.
"""
