"""Find the shared conformance data (upstream CRDs, test vectors) and load CRD schemas from it.

The folder sits beside the project (``../shared/conformance``) unless IDP_CONFORMANCE_DIR says
otherwise; tests that need it skip, naming what is missing, rather than fail on a checkout
without it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def conformance_dir() -> Path | None:
    configured = os.environ.get("IDP_CONFORMANCE_DIR")
    folder = Path(configured) if configured else _PROJECT_ROOT.parent / "shared" / "conformance"
    return folder if folder.is_dir() else None


def conformance_file(relative: str) -> Path:
    """The path of one conformance file, or skip the calling test saying which file is absent."""
    folder = conformance_dir()
    if folder is None:
        configured = os.environ.get("IDP_CONFORMANCE_DIR")
        where = (
            f"IDP_CONFORMANCE_DIR={configured} is not a directory"
            if configured
            else f"{_PROJECT_ROOT.parent / 'shared' / 'conformance'} is absent and "
            "IDP_CONFORMANCE_DIR is not set"
        )
        pytest.skip(f"conformance data not found: {where}")
    path = folder / relative
    if not path.is_file():
        pytest.skip(f"conformance file {relative} not found in {folder}")
    return path


def load_crd_schema(relative: str, version: str) -> dict[str, Any]:
    """``spec.versions[name=version].schema.openAPIV3Schema`` of a CRD file (skips if absent)."""
    path = conformance_file(relative)
    for document in yaml.safe_load_all(path.read_text()):
        if not document or document.get("kind") != "CustomResourceDefinition":
            continue
        for entry in document["spec"]["versions"]:
            if entry["name"] == version:
                return entry["schema"]["openAPIV3Schema"]
    raise LookupError(f"{relative} has no CRD version {version!r}")
