# The notifications project: daphne serving HTTP and WebSocket on port 8000.
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

# The project runs from /app: its templates/ and static/ are not part of the installed
# package. `pip install .` installs the dependencies (and the packages themselves).
COPY --chown=app:app . .
RUN pip install .

USER app

# Static files are collected at build time; WhiteNoise serves them. The secret is a
# throwaway: collectstatic signs nothing and touches no database.
RUN DJANGO_SECRET_KEY=collectstatic-only DJANGO_DEBUG=0 python manage.py collectstatic --noinput

ENV DJANGO_DEBUG=0
EXPOSE 8000

# GET /healthz with a Host from DJANGO_ALLOWED_HOSTS and X-Forwarded-Proto: https.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "deploy/healthcheck.py"]

# The endpoint syntax (instead of -b/-p) raises the listen backlog from Twisted's default
# of 50, for the reconnect burst after a restart. --proxy-headers: the client address and
# scheme come from the load balancer's X-Forwarded-For / X-Forwarded-Proto.
CMD ["daphne", "-e", "tcp:port=8000:interface=0.0.0.0:backlog=4096", "--proxy-headers", "project.asgi:application"]
