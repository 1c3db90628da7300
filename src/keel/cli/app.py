from __future__ import annotations

import typer

from keel.cli import (
    audit_commands,
    client_commands,
    eval_commands,
    identity_commands,
    key_commands,
    metrics_commands,
    registry_commands,
    serve,
)

__all__ = ["app", "main"]

app = typer.Typer(
    name="keel",
    help="Keel: one OpenAI-compatible gateway over every LLM provider and local models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve.serve)
app.command("models")(client_commands.models)
app.command("chat")(client_commands.chat)
app.command("embed")(client_commands.embed)
app.command("requests")(client_commands.requests)
app.command("deployments")(client_commands.deployments)
app.command("cache")(client_commands.cache)
app.add_typer(registry_commands.app, name="registry")
app.command("lineage")(registry_commands.lineage)
app.add_typer(identity_commands.users_app, name="users")
app.add_typer(identity_commands.teams_app, name="teams")
app.add_typer(identity_commands.orgs_app, name="orgs")
app.add_typer(key_commands.keys_app, name="keys")
app.command("usage")(key_commands.usage)
app.command("whoami")(key_commands.whoami)
app.add_typer(audit_commands.app, name="audit")
# monitoring: metrics
app.command("metrics")(metrics_commands.metrics)
# monitoring: traces
from keel.cli import trace_commands  # noqa: E402  (kept beside its registration)

app.command("trace")(trace_commands.trace)
# monitoring: feedback and quality
from keel.cli import feedback_commands  # noqa: E402  (kept beside its registration)

app.command("feedback")(feedback_commands.feedback)
app.command("quality")(feedback_commands.quality)
# monitoring: drift
from keel.cli import drift_commands  # noqa: E402

app.command("drift")(drift_commands.drift)
# monitoring: alerts
from keel.cli import alert_commands  # noqa: E402  (kept beside its registration)

app.add_typer(alert_commands.app, name="alerts")
# experiments: tracking
from keel.cli import run_commands  # noqa: E402  (kept beside its registration)

app.add_typer(run_commands.runs_app, name="runs")
app.add_typer(run_commands.experiments_app, name="experiments")
# experiments: datasets and prompts
from keel.cli import dataset_commands, prompt_commands  # noqa: E402

app.add_typer(dataset_commands.app, name="datasets")
app.add_typer(prompt_commands.app, name="prompts")
app.add_typer(prompt_commands.scorers_app, name="scorers")
# evaluation: suites and search
app.add_typer(eval_commands.app, name="eval")
app.command("version")(client_commands.version)


def main() -> None:
    app()
