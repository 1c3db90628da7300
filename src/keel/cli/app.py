from __future__ import annotations

import typer

from keel.cli import (
    audit_commands,
    client_commands,
    identity_commands,
    key_commands,
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
app.command("version")(client_commands.version)


def main() -> None:
    app()
