"""Container health check: GET /healthz on this container, the way the load balancer sends it.

It names a host from DJANGO_ALLOWED_HOSTS (Django answers 400 to any other Host) and says the
request came in over HTTPS (X-Forwarded-Proto), so that SECURE_SSL_REDIRECT does not answer
with a redirect. Exit status 0 when /healthz answers 200 (the database answers and, with
Redis, a message makes the round trip through the channel layer), else 1.
"""

import os
import sys
import urllib.request

PORT = os.environ.get("PORT", "8000")


def main() -> int:
    hosts = [h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if h.strip()]
    host = hosts[0].lstrip(".") if hosts and hosts[0] != "*" else "localhost"
    request = urllib.request.Request(
        f"http://127.0.0.1:{PORT}/healthz",
        headers={"Host": host, "X-Forwarded-Proto": "https"},
    )
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except Exception as exc:  # HTTPError (503: database or Redis down), URLError, timeout
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
