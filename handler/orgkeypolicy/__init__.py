"""OrgKeyPolicy: share customer-managed KMS keys with the accounts of AWS Organizations OUs.

The pure core (``properties``, ``identifiers``, ``organization``, ``statements``, ``keypolicy``,
``evaluation``, ``access``, ``drift``) holds no AWS client. The flow: ``planning`` resolves the
keys, looks the organization up and computes every key's statements; ``writing`` is the only
code that changes a key policy. ``lifecycle`` runs CloudFormation's Create, Update and Delete
over both, ``resync`` keeps recorded resources true between deploys, and ``cli`` is the
command line. The adapters (``aws``, ``registry``, ``locks``, ``analyzer``) talk to AWS, and
``cfn`` adapts crhelper's response handling.
"""

__version__ = "0.2.0"
