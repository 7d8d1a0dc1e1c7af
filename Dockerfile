# One image for the worker and the entry points (idpctl, and the bridges as they land).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml constraints.txt README.md worker.py ./
COPY idp ./idp
COPY activities ./activities
COPY workflows ./workflows
COPY starter ./starter
COPY emulators ./emulators
RUN pip install --no-cache-dir -c constraints.txt .
USER 65534
ENV HOME=/tmp
ENTRYPOINT ["idp-worker"]
CMD ["--platform", "/etc/idp/platform.yaml", "--cache-dir", "/tmp/idp"]
