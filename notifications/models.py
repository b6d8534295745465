"""Storage: events, who they are for, read state, topics and staff broadcasts.

An :class:`Event` is stored once, whatever its audience. Who may see it is a property of the
event (``reach``, ``groups``, ``to_topic``) resolved by query, plus explicit :class:`Recipient`
rows only for events sent to named users. An announcement to 100,000 users is therefore one row,
not 100,000. Read state is sparse: a per-user ``read_through`` watermark (set by "mark all
read") plus one :class:`ReadMark` per event read individually above it.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

RESERVED_SLUGS = frozenset({"everyone"})
TITLE_MAX_LENGTH = 200


class Level(models.TextChoices):
    INFO = "info", "Info"
    SUCCESS = "success", "Success"
    WARNING = "warning", "Warning"
    ERROR = "error", "Error"


class Reach(models.TextChoices):
    """The widest built-in audience of an event; each value includes the ones above it."""

    TARGETED = "", "Only the named users, groups or topic"
    STAFF = "staff", "Staff"
    AUTHENTICATED = "authenticated", "All signed-in users"
    EVERYONE = "everyone", "Everyone, anonymous visitors included"


def validate_topic_slug(value: str) -> None:
    if value in RESERVED_SLUGS:
        raise ValidationError(f"The slug {value!r} is reserved.")


class Topic(models.Model):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=50, unique=True, validators=[validate_topic_slug])
    description = models.TextField(blank=True)
    is_public = models.BooleanField(
        default=True,
        help_text="Anyone, anonymous visitors included, may follow a public topic. "
        "A private topic reaches only the users and groups subscribed here.",
    )
    users = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        through="Subscription",
        related_name="notification_topics",
        blank=True,
        verbose_name="subscribed users",
    )
    groups = models.ManyToManyField(
        Group,
        related_name="notification_topics",
        blank=True,
        verbose_name="subscribed groups",
        help_text="Every member of these groups may read the topic and follows it.",
    )
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        related_name="notification_private_topics",
        blank=True,
        verbose_name="members",
        help_text="Users who may read this private topic besides its groups' members; they "
        "follow it. A user's own subscription is not a grant: it counts only while the user "
        "may read the topic.",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        permissions = [
            ("view_private_topics", "Can read every private topic and its history"),
        ]

    def __str__(self) -> str:
        return self.name


class Subscription(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    topic = models.ForeignKey(Topic, on_delete=models.CASCADE)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "topic"], name="notifications_sub_unique")
        ]

    def __str__(self) -> str:
        return f"{self.user} → {self.topic}"


class Event(models.Model):
    """One notification, stored once. Its id is the stream position clients resume from."""

    id = models.BigAutoField(primary_key=True)
    title = models.CharField(max_length=TITLE_MAX_LENGTH)
    body = models.TextField(blank=True)
    url = models.CharField(max_length=500, blank=True)
    level = models.CharField(max_length=10, choices=Level.choices, default=Level.INFO)
    topic = models.ForeignKey(
        Topic, null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
    data = models.JSONField(default=dict, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    # Audience. An event reaches the union of these parts.
    reach = models.CharField(max_length=16, choices=Reach.choices, default=Reach.TARGETED)
    groups = models.ManyToManyField(Group, blank=True, related_name="+")
    to_topic = models.BooleanField(
        default=False, help_text="Sent to the subscribers of `topic`, not only labelled with it."
    )
    permission = models.ForeignKey(
        Permission,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Sent to the active users who have this permission.",
    )
    channel = models.CharField(
        max_length=100,
        blank=True,
        default="",
        help_text="Sent to the sockets following this object channel (notifications.channels), "
        "for example orders.42; not kept in inboxes.",
    )
    expires_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="After this, the event is no longer delivered, replayed or counted as unread.",
    )
    recipient_count = models.PositiveIntegerField(default=0)
    translations = models.JSONField(
        default=dict,
        blank=True,
        help_text="Title and body in the languages where they differ: {code: {title, body}}.",
    )
    group_key = models.CharField(
        max_length=200,
        blank=True,
        default="",
        db_index=True,
        help_text="Events with the same key collapse into one row of the feed.",
    )
    idempotency_key = models.CharField(max_length=200, null=True, blank=True, unique=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # What the notification is about (notify(..., target=obj)), like django-notifications-hq's
    # target: any model instance. Not a foreign key, so deleting the object leaves the event;
    # notifications/targets.py clears the reference when the site asks it to.
    target_content_type = models.ForeignKey(
        ContentType, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    target_object_id = models.CharField(max_length=255, blank=True, default="")
    target = GenericForeignKey("target_content_type", "target_object_id")

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["reach", "id"], name="notifications_event_reach"),
            models.Index(fields=["to_topic", "topic"], name="notifications_event_topic"),
            models.Index(
                fields=["target_content_type", "target_object_id"],
                name="notifications_event_target",
            ),
            models.Index(fields=["channel", "id"], name="notifications_event_channel"),
        ]

    def __str__(self) -> str:
        return f"#{self.id} {self.title}"


class Recipient(models.Model):
    """An event sent to a named user (not needed for groups, topics and broad reach)."""

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="recipients")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "event"], name="notifications_rcpt_unique")
        ]

    def __str__(self) -> str:
        return f"{self.event_id} → user {self.user_id}"


class ReadMark(models.Model):
    """One event read by one user, above that user's ``read_through`` watermark."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="read_marks")
    read_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "event"], name="notifications_read_unique")
        ]

    def __str__(self) -> str:
        return f"user {self.user_id} read {self.event_id}"


class InboxState(models.Model):
    """Per-user read watermark: every event with ``id <= read_through`` counts as read."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="notification_inbox",
    )
    read_through = models.BigIntegerField(default=0)
    read_through_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"user {self.user_id} read through {self.read_through}"


class MembershipChange(models.Model):
    """A user's groups, topics or flags changed. Hubs read these rows as well as the layer's
    message, so that a change made where no channel layer reaches (another process under the
    in-memory layer, or a lost message) still applies to open sockets."""

    id = models.BigAutoField(primary_key=True)
    user_id = models.BigIntegerField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return f"user {self.user_id} changed at {self.created_at:%Y-%m-%d %H:%M:%S}"


class Broadcast(models.Model):
    """A push composed by staff in the admin. Sending it creates one :class:`Event`.

    Its ``status`` moves draft -> scheduled -> sending -> sent (or failed); a scheduled one
    can be cancelled back to a draft. "Send now" is a schedule for now: every send is made by
    the server's background sender (notifications/realtime/scheduler.py), exactly once.
    """

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        SCHEDULED = "scheduled", "Scheduled"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    class Audience(models.TextChoices):
        EVERYONE = "everyone", "Everyone (anonymous visitors included)"
        AUTHENTICATED = "authenticated", "All signed-in users"
        STAFF = "staff", "Staff"
        GROUPS = "groups", "Groups"
        USERS = "users", "Users"
        TOPIC = "topic", "Topic subscribers"
        PERMISSION = "permission", "Users with a permission"

    title = models.CharField(max_length=TITLE_MAX_LENGTH)
    body = models.TextField(blank=True)
    url = models.CharField("link", max_length=500, blank=True)
    level = models.CharField(max_length=10, choices=Level.choices, default=Level.INFO)
    audience = models.CharField(max_length=16, choices=Audience.choices, default=Audience.EVERYONE)
    groups = models.ManyToManyField(Group, blank=True, related_name="+")
    users = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="+")
    topic = models.ForeignKey(Topic, null=True, blank=True, on_delete=models.SET_NULL)
    permission = models.ForeignKey(
        Permission, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    send_at = models.DateTimeField(
        null=True, blank=True, help_text="Send at this time instead of now (scheduled)."
    )
    expires_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="After this, the notification is no longer delivered, replayed or counted "
        "as unread; it stays here.",
    )
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    sent_at = models.DateTimeField(null=True, blank=True)
    sent_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    event = models.OneToOneField(
        Event, null=True, blank=True, on_delete=models.SET_NULL, related_name="broadcast"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    scheduled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The user the background sender acts for; their permission is checked "
        "again at send time.",
    )
    claimed_at = models.DateTimeField(
        null=True, blank=True, help_text="When a server process took this broadcast to send it."
    )
    failure_reason = models.TextField(blank=True)
    pending_users = models.JSONField(
        null=True,
        blank=True,
        help_text="Ids of users still to be added to `users` by the background sender: a "
        "selection of 100,000 users is stored as one value in the request, not 100,000 rows.",
    )
    # Delivered live: what the hubs wrote when the event went out, added up over processes.
    delivered_users = models.PositiveIntegerField(default=0)
    delivered_anonymous = models.PositiveIntegerField(default=0)
    delivered_connections = models.PositiveIntegerField(default=0)
    delivery_reports = models.PositiveIntegerField(
        default=0, help_text="Server processes that reported their live delivery."
    )

    class Meta:
        ordering = ["-created_at"]
        permissions = [("send_broadcast", "Can send broadcasts")]
        indexes = [
            models.Index(fields=["status", "send_at"], name="notifications_bcast_due"),
        ]

    def __str__(self) -> str:
        return self.title


def all_levels() -> list[str]:
    return list(Level.values)


class FeedState(models.Model):
    """Per-user "seen" watermark of the feed: events with ``id <= seen_through`` have been
    shown to the user (the feed was opened), read or not. Seen is not read: it only clears
    the new-items indicator on the bell."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="notification_feed",
    )
    seen_through = models.BigIntegerField(default=0)
    seen_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"user {self.user_id} saw through {self.seen_through}"


class ArchiveMark(models.Model):
    """One event archived by one user: gone from the feed, still in the inbox history."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="archive_marks")
    archived_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "event"], name="notifications_archive_unique")
        ]

    def __str__(self) -> str:
        return f"user {self.user_id} archived {self.event_id}"


class Preferences(models.Model):
    """What a signed-in user wants to be interrupted by. Muting never hides an event: muted
    topics make no toast and no desktop notification, and stay in the inbox and the unread
    count (docs/client.md, "Preferences")."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="notification_preferences",
    )
    muted_topics = models.ManyToManyField(Topic, blank=True, related_name="+")
    language = models.CharField(
        max_length=15,
        blank=True,
        help_text="Notifications in this language (empty: the browser's).",
    )
    toast_levels = models.JSONField(default=all_levels, blank=True)
    desktop_levels = models.JSONField(default=all_levels, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "preferences"

    def __str__(self) -> str:
        return f"preferences of user {self.user_id}"


class ApiScope(models.TextChoices):
    """Audience keys of the HTTP API that a token may be limited to (PROTOCOL.md)."""

    USERS = "users", "Named users"
    GROUPS = "groups", "Groups"
    TOPIC = "topic", "Topic subscribers"
    EVERYONE = "everyone", "Everyone"
    STAFF = "staff", "Staff"
    AUTHENTICATED = "authenticated", "All signed-in users"
    PERMISSION = "permission", "Users with a permission"


def validate_api_scopes(value: object) -> None:
    if not isinstance(value, list) or not all(item in ApiScope.values for item in value):
        raise ValidationError(f"scopes must be a list of {', '.join(ApiScope.values)}")


class ApiToken(models.Model):
    """A bearer token of the HTTP API (notifications/api/tokens.py makes and checks them).

    Only the SHA-256 digest of the token is stored: tokens are 32 random bytes, so a fast
    hash is as strong as a slow one here and keeps every request cheap. ``prefix`` is the
    token's first characters, not secret, shown in lists so that people can tell tokens apart.
    """

    name = models.CharField(max_length=100, unique=True)
    prefix = models.CharField(max_length=12, db_index=True, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    scopes = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_api_scopes],
        help_text="Audience keys this token may use; empty: all of them.",
    )
    rate = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text='Requests per minute; empty: NOTIFICATIONS["API_RATE"].',
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return self.name


class ApiRateWindow(models.Model):
    """Requests one token made in one minute, counted in the database so that the limit holds
    across server processes."""

    token = models.ForeignKey(ApiToken, on_delete=models.CASCADE, related_name="+")
    minute = models.BigIntegerField(help_text="Minutes since the epoch.")
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["token", "minute"], name="notifications_rate_unique")
        ]

    def __str__(self) -> str:
        return f"{self.token_id} @ {self.minute}: {self.count}"


class PurgeWatermark(models.Model):
    """How far ``manage.py purge_notifications`` has deleted: one row (pk 1).

    ``purged_through`` is the highest event id it deleted. A replay from a cursor below it may
    have lost events, so it answers ``complete: false``; ids that never committed (rolled
    back) leave gaps too, but they never raise this mark.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    purged_through = models.BigIntegerField(default=0)
    purged_at = models.DateTimeField(null=True, blank=True)
    deleted_total = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"purged through event {self.purged_through}"


class PresenceProcess(models.Model):
    """One server process's open connections, refreshed every ``PRESENCE_INTERVAL`` seconds.

    The presence store of the embedded defaults (no Redis): ``presence.snapshot()`` reads
    the rows refreshed within ``PRESENCE_TTL`` seconds, from any process.
    """

    process = models.CharField(max_length=200, primary_key=True)
    users = models.JSONField(default=list)
    anonymous = models.PositiveIntegerField(default=0)
    connections = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name = "online now"
        verbose_name_plural = "online now"

    def __str__(self) -> str:
        return self.process
