"""moto's server, run in this process, as the local AWS.

Every service moto implements answers on one port; boto3 finds the service from the request
(SigV4 credential scope or ``X-Amz-Target``), so a single ``AWS_ENDPOINT_URL`` covers
Organizations, KMS and STS alike.

The server runs in a thread of the current process, which matters in three ways:

- its backends are this process's ``moto`` modules, so :mod:`localaws.seed` can fill them
  directly when the HTTP API would be too slow;
- moto reads some settings from ``os.environ`` at request time. ``MOTO_ACCOUNT_ID`` in the
  environment changes the account every request is served as (to play a member account);
- :meth:`LocalAws.start` makes symmetric KMS keys share their unused RSA key material, which
  moto would otherwise generate for each key (see :func:`_share_symmetric_key_material`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import boto3
from botocore.config import Config
from moto.iam import models as iam_models
from moto.kms import models as kms_models
from moto.organizations.models import organizations_backends
from moto.server import ThreadedMotoServer

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_organizations import OrganizationsClient
    from mypy_boto3_sts import STSClient

MOTO_ACCOUNT_ID = "123456789012"
"""The account moto serves every request as: the organization's management account."""

DEFAULT_REGION = "us-east-1"
FAKE_ACCESS_KEY_ID = "testing"
FAKE_SECRET_ACCESS_KEY = "testing"

# Variables that would make boto3 ignore AWS_ENDPOINT_URL, pick other credentials, read a
# developer's ~/.aws profile or change retry behaviour between machines.
_STALE_AWS_VARIABLES = (
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
    "MOTO_ACCOUNT_ID",
)


def aws_environment(url: str, region: str = DEFAULT_REGION) -> dict[str, str]:
    """Environment variables that point every boto3 client in this process at ``url``.

    ``AWS_SESSION_TOKEN`` and the other variables of :func:`stale_aws_variables` must be
    absent too; :func:`patched_environment` removes them.
    """
    return {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_ACCESS_KEY,
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        # No instance-metadata probing (a 1 s timeout per attempt on a machine without it)
        # and no shared config or credentials from the developer's home directory.
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


def stale_aws_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """Names in ``environ`` (default ``os.environ``) that must be unset next to
    :func:`aws_environment`: session tokens, profiles, per-service endpoint overrides
    (``AWS_ENDPOINT_URL_KMS``, ...), retry settings and ``MOTO_ACCOUNT_ID``."""
    env = os.environ if environ is None else environ
    return [
        name for name in env if name in _STALE_AWS_VARIABLES or name.startswith("AWS_ENDPOINT_URL_")
    ]


@contextlib.contextmanager
def patched_environment(
    env: Mapping[str, str], *, unset: Iterable[str] | None = None
) -> Iterator[None]:
    """Set ``env`` in ``os.environ`` (and remove ``unset``) for the ``with`` block, then
    restore every touched variable to what it was.

    ``unset=None`` removes :func:`stale_aws_variables`; pass ``unset=()`` to remove nothing.
    """
    names_to_unset = list(stale_aws_variables() if unset is None else unset)
    touched = set(env) | set(names_to_unset)
    saved = {name: os.environ.get(name) for name in touched}
    try:
        for name in names_to_unset:
            os.environ.pop(name, None)
        os.environ.update(env)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_session_lock = threading.Lock()
_sessions: dict[str, boto3.session.Session] = {}


def fake_client(
    service: str, endpoint_url: str, region: str = DEFAULT_REGION, config: Config | None = None
) -> Any:
    """A boto3 client for ``service`` at ``endpoint_url`` with fake credentials.

    Clients come from one boto3 session per region, kept for the process: a fresh session
    reloads the service models from disk, ~70 ms per client. The sessions are built with
    explicit credentials, so ``os.environ`` and ``~/.aws`` never leak into them; creating
    clients is serialised because botocore sessions are not thread-safe for that.
    """
    with _session_lock:
        session = _sessions.get(region)
        if session is None:
            session = boto3.session.Session(
                aws_access_key_id=FAKE_ACCESS_KEY_ID,
                aws_secret_access_key=FAKE_SECRET_ACCESS_KEY,
                region_name=region,
            )
            _sessions[region] = session
        return session.client(service, endpoint_url=endpoint_url, config=config)  # type: ignore[call-overload]


def _share_symmetric_key_material() -> None:
    """moto 5.2.5 generates an RSA-2048 private key for every KMS key, symmetric ones too
    (~80 ms of CPU per CreateKey). Symmetric and HMAC keys never use it (Sign, Verify and
    GetPublicKey reject them), so they share one, generated on first use."""
    original = kms_models.generate_private_key  # type: ignore[attr-defined]
    if getattr(original, "shares_symmetric_key_material", False):
        return
    shared: list[Any] = []

    def generate_private_key(key_spec: str) -> Any:
        if key_spec != "SYMMETRIC_DEFAULT" and not key_spec.startswith("HMAC_"):
            return original(key_spec)
        if not shared:
            shared.append(original(key_spec))
        return shared[0]

    generate_private_key.shares_symmetric_key_material = True  # type: ignore[attr-defined]
    kms_models.generate_private_key = generate_private_key  # type: ignore[attr-defined]


def _read_iam_resources_as_cloudformation_does() -> None:
    """Two things CloudFormation does with IAM resources that moto 5.2.5 does not:

    - a policy document (a ``Json`` property) may be JSON text, which is how a template
      writes a condition key built with ``Fn::Sub``; moto takes text for a role's trust
      policy but encodes it once more for ``AWS::IAM::ManagedPolicy``;
    - an inline policy that ``Fn::If`` turns into ``AWS::NoValue`` is left out of a role's
      ``Policies``, and such a statement out of a managed policy's ``Statement``; moto keeps
      them as ``None`` and fails on them.
    """
    policy_from_cfn = iam_models.ManagedPolicy.create_from_cloudformation_json
    role_from_cfn = iam_models.Role.create_from_cloudformation_json
    if getattr(policy_from_cfn, "as_cloudformation_does", False):
        return

    def with_properties(
        cloudformation_json: dict[str, Any], change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any]:
        properties = change(dict(cloudformation_json.get("Properties", {})))
        return {**cloudformation_json, "Properties": properties}

    def parsed(properties: dict[str, Any]) -> dict[str, Any]:
        document = properties.get("PolicyDocument")
        if isinstance(document, str):
            document = json.loads(document)
        if isinstance(document, dict) and isinstance(document.get("Statement"), list):
            # A statement that Fn::If turned into AWS::NoValue is left out, as CloudFormation does.
            document = {
                **document,
                "Statement": [s for s in document["Statement"] if s is not None],
            }
        properties["PolicyDocument"] = document
        return properties

    def present(properties: dict[str, Any]) -> dict[str, Any]:
        if "Policies" in properties:
            properties["Policies"] = [p for p in properties["Policies"] if p is not None]
        return properties

    def policy(cls: Any, name: str, template: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        return policy_from_cfn(name, with_properties(template, parsed), *args, **kwargs)

    def role(cls: Any, name: str, template: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        return role_from_cfn(name, with_properties(template, present), *args, **kwargs)

    policy.as_cloudformation_does = True  # type: ignore[attr-defined]
    iam_models.ManagedPolicy.create_from_cloudformation_json = classmethod(policy)  # type: ignore[assignment,method-assign]
    iam_models.Role.create_from_cloudformation_json = classmethod(role)  # type: ignore[assignment,method-assign]


class LocalAws:
    """moto's ``ThreadedMotoServer`` on 127.0.0.1, plus clients pointed at it."""

    def __init__(self, server: ThreadedMotoServer, host: str, port: int) -> None:
        self._server: ThreadedMotoServer | None = server
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"

    @classmethod
    def start(cls, port: int = 0) -> LocalAws:
        """Start moto's server on 127.0.0.1; ``port=0`` takes a free port."""
        # werkzeug logs every request at INFO on stderr; keep that out of test and
        # benchmark output unless someone asked for the logger's level explicitly.
        werkzeug_logger = logging.getLogger("werkzeug")
        if werkzeug_logger.level == logging.NOTSET:
            werkzeug_logger.setLevel(logging.WARNING)
        _share_symmetric_key_material()
        _read_iam_resources_as_cloudformation_does()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        host, bound_port = server.get_host_and_port()
        return cls(server, host, int(bound_port))

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def reset(self) -> None:
        """Empty every moto backend, so the next test starts from nothing."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
        # moto's reset leaves its map of member account -> management account behind; a
        # stale entry would make a later organization's accounts look like members of a
        # vanished one.
        organizations_backends.master_accounts.clear()

    def environment(self, region: str = DEFAULT_REGION) -> dict[str, str]:
        return aws_environment(self.url, region)

    def client(
        self, service: str, region: str = DEFAULT_REGION, *, config: Config | None = None
    ) -> Any:
        """A boto3 client for ``service`` pointed at this server; see :func:`fake_client`."""
        return fake_client(service, self.url, region, config)

    def organizations(self) -> OrganizationsClient:
        client: OrganizationsClient = self.client("organizations")
        return client

    def kms(self, region: str = DEFAULT_REGION) -> KMSClient:
        client: KMSClient = self.client("kms", region)
        return client

    def sts(self, region: str = DEFAULT_REGION) -> STSClient:
        client: STSClient = self.client("sts", region)
        return client
