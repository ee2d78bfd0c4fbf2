"""OrgKeyPolicy: share customer-managed KMS keys with the accounts of AWS Organizations OUs.

The pure core (``properties``, ``identifiers``, ``organization``, ``statements``, ``keypolicy``)
holds no AWS client; ``aws`` is the only module that talks to AWS, ``resource`` runs the
CloudFormation lifecycle over both, and ``cfn`` adapts crhelper's response handling.
"""

__version__ = "0.2.0"
