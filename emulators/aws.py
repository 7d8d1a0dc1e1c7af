"""`python -m emulators.aws --host H --port N`: moto, standing in for AWS, one request at a time,
with ECR's repositories in the Resource Groups Tagging API (`serve_ecr_tags`).

moto's own server answers each request on a thread of its own, but its backends are not safe
for that: a DescribeRepositories that iterates the registry while a CreateRepository adds to it
fails with "dictionary changed size during iteration", returned as a 500. AWS never answers so,
and at a few thousand workloads a fleet read meets it on every try (seen in a 10,000-workload
run). Requests are still read and written on threads of their own; only moto's work is serial.
"""

import argparse
import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from moto.core.resource_tagging import TaggableResourcesMixin, TaggedResource
from moto.ecr.models import ECRBackend, ecr_backends
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple


def serial(app: Any) -> Any:
    """`app` with one request in it at a time, its answer read whole inside."""
    lock = threading.Lock()

    def serve(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        with lock:
            answer = app(environ, start_response)
            try:
                return list(answer)
            finally:
                # As a WSGI server would, once the answer is read (PEP 3333).
                if hasattr(answer, "close"):
                    answer.close()

    return serve


class _Dispatcher(DomainDispatcherApplication):
    """moto's dispatcher, remembering which backend serves which host. moto finds it anew for
    every request, twice (the address asked, then the service the signature names), and each
    time lists its own package directory from disk and tries every service's URL patterns.
    Remembered, a fleet read of 1,000 workloads (bench/registry_fleet.py) cost moto 1.50 cpu-s
    where it cost 2.18. The answer for a host never changes while the process runs."""

    def __init__(self, create_app: Any) -> None:
        super().__init__(create_app)
        self._backends: dict[str | None, Any] = {}

    def get_backend_for_host(self, host: str | None) -> Any:
        if host not in self._backends:
            self._backends[host] = super().get_backend_for_host(host)
        return self._backends[host]


class _TaggedECRBackend(ECRBackend, TaggableResourcesMixin):
    SERVICE_NAMESPACE = "ecr"
    # moto finds a backend's URL routes by the module its class is defined in: ECR's.
    __module__ = ECRBackend.__module__

    def iter_tagged_resources(self) -> Iterator[TaggedResource]:
        # A copy: another request may add a repository while this one reads.
        for repo in list(self.repositories.values()):
            yield TaggedResource(
                arn=repo.arn,
                tags=self.tagger.get_tag_dict_for_resource(repo.arn),
                resource_type="ecr:repository",
                # AWS lists a repository whose tags were all removed, with none, but not one never
                # tagged; moto keeps no such history, so it lists every repository. Either way a
                # reader learns the same tags.
                extra={"include_untagged": True},
            )


def serve_ecr_tags() -> None:
    """Answer GetResources of the Tagging API for ECR repositories, as AWS does and moto 5 does
    not: the registry's fleet read takes their tags from it. Call it in the process that serves
    moto, before its first ECR request creates a backend."""
    ecr_backends.backend = _TaggedECRBackend


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m emulators.aws", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # moto names itself in some answers (presigned URLs) by this port, as its own server sets it.
    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve_ecr_tags()
    run_simple(
        args.host,
        args.port,
        serial(_Dispatcher(create_backend_app)),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
