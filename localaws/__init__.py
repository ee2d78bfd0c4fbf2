"""Local stand-ins for AWS and CloudFormation, for tests, the demo and benchmarks.

- :mod:`localaws.server`: moto's server in this process (Organizations, KMS, STS, ...).
- :mod:`localaws.proxy`: an HTTP proxy in front of it that adds latency, injects AWS-shaped
  errors and logs every call.
- :mod:`localaws.cfn`: CloudFormation's side of the custom-resource protocol: the events it
  sends, the HTTPS endpoint that receives the responses, and a Lambda context.
- :mod:`localaws.seed`: a small demo organization with KMS keys, and large synthetic
  organizations for benchmarks.
- :mod:`localaws.samples`: the sample requests of ``events/`` bound to a seeded organization.

Nothing here reaches real AWS: every client is pointed at 127.0.0.1 with fake credentials.
"""

from localaws.server import MOTO_ACCOUNT_ID, LocalAws, aws_environment, patched_environment

__all__ = ["MOTO_ACCOUNT_ID", "LocalAws", "aws_environment", "patched_environment"]
