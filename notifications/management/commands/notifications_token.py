"""``manage.py notifications_token create|revoke|list``: bearer tokens of the HTTP API."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from notifications.api import tokens
from notifications.models import ApiScope, ApiToken


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


class Command(BaseCommand):
    help = "Create, revoke or list the bearer tokens of the HTTP API."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        create = actions.add_parser(
            "create", help="create a token and print it once, as the last line: token=<value>"
        )
        create.add_argument("name")
        create.add_argument(
            "--scope",
            action="append",
            default=[],
            choices=ApiScope.values,
            dest="scopes",
            help="an audience key the token may use (repeat for several; none: all keys)",
        )
        create.add_argument(
            "--rate",
            type=_positive,
            default=None,
            metavar="N",
            help='requests per minute (default: NOTIFICATIONS["API_RATE"])',
        )
        revoke = actions.add_parser("revoke", help="revoke a token: later requests get 401")
        revoke.add_argument("name")
        actions.add_parser("list", help="list tokens (never their values)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            getattr(self, f"_{options['action']}")(options)
        except tokens.TokenError as exc:
            raise CommandError(str(exc)) from None

    def _create(self, options: dict[str, Any]) -> None:
        token, raw = tokens.create_token(
            options["name"], scopes=options["scopes"], rate=options["rate"]
        )
        self.stdout.write(
            f"Created token {token.name!r} (scopes: {', '.join(token.scopes) or 'all'}; "
            f"rate: {token.rate or 'default'}). It is shown only now; store it safely."
        )
        self.stdout.write(f"token={raw}")

    def _revoke(self, options: dict[str, Any]) -> None:
        token, changed = tokens.revoke_token(options["name"])
        state = "revoked" if changed else "was already revoked"
        self.stdout.write(f"Token {token.name!r} {state} at {token.revoked_at:%Y-%m-%d %H:%M:%S}.")

    def _list(self, options: dict[str, Any]) -> None:
        def when(value: Any) -> str:
            return f"{value:%Y-%m-%d %H:%M:%S}" if value else "-"

        self.stdout.write("name\tprefix\tscopes\trate\tcreated\tlast used\trevoked")
        for token in ApiToken.objects.order_by("name"):
            self.stdout.write(
                "\t".join(
                    [
                        token.name,
                        token.prefix,
                        ",".join(token.scopes) or "all",
                        str(token.rate or "default"),
                        when(token.created_at),
                        when(token.last_used_at),
                        when(token.revoked_at),
                    ]
                )
            )
