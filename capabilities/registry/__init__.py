"""The Registry capability: a workload's ECR repository and the IAM role its pods assume.

capability.py is its pure half (models, plan), which the workflow engine runs; target.py says
where and for whom; aws.py and actions.py are the worker's half.
"""

from capabilities.registry.capability import Registry, RegistryOutput

__all__ = ["Registry", "RegistryOutput"]
