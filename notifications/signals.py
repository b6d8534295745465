"""Public signals, for e-mail fallback, analytics and the like.

``notification_sent(sender=Event, event=Event)``: after the transaction that stored it commits.
``notification_read(sender=Event, user=User, ids=list[int] | None)``: after a user read events;
``ids`` is None for "mark all read".
"""

from django.dispatch import Signal

notification_sent = Signal()
notification_read = Signal()
