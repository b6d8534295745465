"""``manage.py notify``: store and publish a notification from scripts and cron."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError, CommandParser

from notifications.audiences import Audience
from notifications.models import Level, Reach, Topic
from notifications.services import notify


class Command(BaseCommand):
    help = "Send a notification to users, groups, topic subscribers or everyone."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--title", required=True)
        parser.add_argument("--body", default="")
        parser.add_argument("--url", default="")
        parser.add_argument("--level", default=Level.INFO, choices=Level.values)
        parser.add_argument(
            "--topic",
            metavar="SLUG",
            help="label the notification with this topic; alone (no audience option), "
            "send it to the topic's subscribers",
        )
        audience = parser.add_mutually_exclusive_group()
        audience.add_argument(
            "--user", nargs="+", action="extend", metavar="USERNAME", dest="users"
        )
        audience.add_argument("--group", nargs="+", action="extend", metavar="NAME", dest="groups")
        audience.add_argument("--everyone", action="store_true")
        audience.add_argument("--staff", action="store_true", help="all staff users")
        audience.add_argument("--authenticated", action="store_true", help="all signed-in users")
        audience.add_argument(
            "--permission",
            metavar="APP_LABEL.CODENAME",
            help="the active users who have this permission (directly, through a group, or "
            "as superusers)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        topic = None
        if options["topic"]:
            topic = Topic.objects.filter(slug=options["topic"]).first()
            if topic is None:
                raise CommandError(f"no topic with slug {options['topic']!r}")
        try:
            audience = self._audience(options, topic)
            event = notify(
                audience,
                options["title"],
                body=options["body"],
                url=options["url"],
                level=options["level"],
                topic=topic,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"id={event.id} recipients={event.recipient_count}")

    def _audience(self, options: dict[str, Any], topic: Topic | None) -> Audience:
        if options["everyone"]:
            return Audience(reach=Reach.EVERYONE)
        if options["staff"]:
            return Audience(reach=Reach.STAFF)
        if options["authenticated"]:
            return Audience(reach=Reach.AUTHENTICATED)
        if options["permission"]:
            return Audience(permission=options["permission"])  # ValueError: unknown
        if options["users"]:
            names = options["users"]
            users = get_user_model()._default_manager.filter(
                **{f"{get_user_model().USERNAME_FIELD}__in": names}
            )
            found = {user.get_username() for user in users}
            missing = [name for name in names if name not in found]
            if missing:
                raise CommandError(f"unknown user(s): {', '.join(missing)}")
            return Audience(users=users)
        if not options["groups"]:
            if topic is None:
                raise CommandError(
                    "choose an audience: --user, --group, --everyone, --staff, "
                    "--authenticated, or --topic alone for its subscribers"
                )
            return Audience(topic=topic)
        names = options["groups"]
        groups = list(Group.objects.filter(name__in=names))
        missing = sorted(set(names) - {group.name for group in groups})
        if missing:
            raise CommandError(f"unknown group(s): {', '.join(missing)}")
        return Audience(groups=groups)
