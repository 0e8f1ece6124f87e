"""``flask --app wsgi keys …``: create, list and revoke API keys in the service's database."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from .auth.keys import SCOPES, issue_key
from .state import EXTENSION_KEY
from .storage import KeyNameTaken, SqlKeyStore

keys_command = AppGroup("keys", help="Manage API keys (stored as hashes in the service's database).")


def _key_store() -> SqlKeyStore:
    return current_app.extensions[EXTENSION_KEY].keys.store


@keys_command.command("create")
@click.option("--name", required=True, help="A unique name; logs show it, never the key.")
@click.option("--scope", "scopes", multiple=True, type=click.Choice(SCOPES), default=("chat",), show_default=True,
              help="Repeat for several. admin implies the others.")
@click.option("--rpm", type=click.IntRange(min=1), help="Requests per minute (default: unlimited).")
@click.option("--tpm", type=click.IntRange(min=1),
              help="Tokens per minute: prompt plus max_tokens reserved at admission (default: unlimited).")
@click.option("--streams", type=click.IntRange(min=1), help="Concurrent generations (default: unlimited).")
def create_key(name: str, scopes: tuple[str, ...], rpm: int | None, tpm: int | None, streams: int | None) -> None:
    """Create a key and print it once: only its hash is kept."""
    try:
        record, plain = issue_key(_key_store(), name, scopes, rpm=rpm, tpm=tpm, max_streams=streams)
    except KeyNameTaken:
        raise click.ClickException(f"a key named {name!r} already exists") from None
    click.echo(plain)
    click.echo(f"created key {record.name!r} (id {record.id}); store it now, it is not shown again", err=True)


@keys_command.command("list")
def list_keys() -> None:
    """Every key: name, id, scopes, limits, created, revoked."""
    click.echo("name\tid\tscopes\trpm\ttpm\tstreams\tcreated\trevoked")
    for key in _key_store().list():
        revoked = key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "-"
        limits = [str(v) if v is not None else "-" for v in (key.rpm, key.tpm, key.max_streams)]
        click.echo("\t".join([key.name, key.id, ",".join(key.scopes), *limits,
                              key.created_at.isoformat(timespec="seconds"), revoked]))


@keys_command.command("revoke")
@click.argument("name")
def revoke_key(name: str) -> None:
    """Revoke the key called NAME: its next request, on any worker, gets 401."""
    if not _key_store().revoke(name):
        raise click.ClickException(f"no active key named {name!r}")
    click.echo(f"revoked key {name!r}")
