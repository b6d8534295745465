# The notifications project: uvicorn (websockets-sansio) serving HTTP and WebSocket on port 8000.
# Production settings come from the environment (docs/deployment.md, docs/settings.md).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 app \
    && mkdir /app \
    && chown app:app /app
WORKDIR /app

# The project runs from /app: the demo `project` package, its templates/ and static/ are not
# part of the installed package. `pip install .` installs the app and the dependencies.
COPY --chown=app:app . .
RUN pip install .

# The `app` user created above, by its uid (hadolint DL3066).
USER 10001

# Static files are collected at build time; WhiteNoise serves them. The secret is a
# throwaway: collectstatic signs nothing and touches no database.
RUN DJANGO_SECRET_KEY=collectstatic-only DJANGO_DEBUG=0 python manage.py collectstatic --noinput

ENV DJANGO_DEBUG=0
EXPOSE 8000

# GET /healthz with a Host from DJANGO_ALLOWED_HOSTS and X-Forwarded-Proto: https.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "deploy/healthcheck.py"]

# The production server (docs/deployment.md; why uvicorn with websockets-sansio:
# docs/performance.md, "Server choice"). One process, one event loop, one hub per container.
# --ws-max-size: a client frame is buffered whole before the app's 64 KiB check; 1 MiB, as
# daphne's limit (uvicorn's default is 16 MiB). --backlog: the reconnect burst after a restart.
# --http: httptools with a deadline on the request head (NOTIFICATIONS REQUEST_HEAD_TIMEOUT).
# --proxy-headers: the client address and scheme come from X-Forwarded-For / X-Forwarded-Proto.
# --forwarded-allow-ips "*" trusts those headers from any peer. That is right in compose.yaml:
# port 8000 is not published, only nginx on the private network sends requests, and it
# overwrites both headers. When the port is exposed directly, narrow it to the load
# balancer's addresses, or any client can choose its own address and scheme.
CMD ["uvicorn", "project.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--ws", "websockets-sansio", "--ws-per-message-deflate", "false", "--ws-max-size", "1048576", "--http", "notifications.realtime.uvicorn_http:HttpToolsProtocol", "--loop", "uvloop", "--backlog", "4096", "--proxy-headers", "--forwarded-allow-ips", "*", "--log-level", "warning"]
