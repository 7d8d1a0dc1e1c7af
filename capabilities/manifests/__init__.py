"""The Manifests capability: the files a workload keeps in its destination's git state store.

capability.py is its pure half (models, plan), which the workflow engine runs; actions.py is
the worker's half.
"""

from capabilities.manifests.capability import Manifests, ManifestsOutput

__all__ = ["Manifests", "ManifestsOutput"]
