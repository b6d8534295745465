"""Demo data for `make run`: a staff user to sign in with and a public topic."""

from django.contrib.auth import get_user_model

from notifications.models import Topic


def ensure_demo_data() -> None:
    users = get_user_model()._default_manager
    if not users.filter(username="demo").exists():
        users.create_superuser("demo", "demo@example.com", "demo")
        print("Created the demo user: sign in as demo / demo")
    Topic.objects.get_or_create(
        slug="news", defaults={"name": "News", "description": "Site news (a public topic)."}
    )
