"""An S3 bucket per workload, as an idp capability installed from its own package.

capability.py is the pure half (models, bucket name, plan), which runs inside WorkloadWorkflow
and so must stay deterministic and free of I/O; actions.py is the worker's half, the only place
that talks to S3. The entry point `Bucket` in pyproject.toml is how idp finds it.
"""

from idp_bucket.capability import Bucket, BucketOutput, BucketSettings, BucketSpec

__all__ = ["Bucket", "BucketOutput", "BucketSettings", "BucketSpec"]
