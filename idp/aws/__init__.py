"""idp's AWS building blocks: the client and its error mapping (client.py), the ownership tags
(tags.py), and the IAM and ECR documents (iam.py, ecr.py) that the Registry capability
(capabilities/registry/) keeps in place."""
