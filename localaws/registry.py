"""The provider's registry table in the local AWS, as template.yaml declares it.

``tests/test_template.py`` checks that the key schema here is the template's.
"""

from __future__ import annotations

from localaws.server import DEFAULT_REGION, fake_client

REGISTRY_TABLE = "orgkeypolicy-registry"
KEY_SCHEMA = [{"AttributeName": "id", "KeyType": "HASH"}]
ATTRIBUTES = [{"AttributeName": "id", "AttributeType": "S"}]


def create_registry_table(
    url: str, name: str = REGISTRY_TABLE, region: str = DEFAULT_REGION
) -> str:
    """Create the table (on-demand, like the template's) unless it exists; its name."""
    dynamodb = fake_client("dynamodb", url, region)
    if name not in dynamodb.list_tables()["TableNames"]:
        dynamodb.create_table(
            TableName=name,
            KeySchema=KEY_SCHEMA,
            AttributeDefinitions=ATTRIBUTES,
            BillingMode="PAY_PER_REQUEST",
        )
    return name
