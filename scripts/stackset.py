"""The provider as a service-managed StackSet can deploy it: plain CloudFormation, code by region.

Service-managed StackSets refuse templates that use macros, the ``AWS::Serverless``
transform included, and a Lambda function's code must come from an S3 bucket in the
function's own region. So this script takes ``template.yaml`` and the output of ``sam build``
and writes, with no AWS call:

- ``template.json``: the template as the SAM transform expands it (translated offline by the
  SAM translator, as CloudFormation would), every function and layer reading its code from
  the bucket ``<CodeBucketPrefix>-<region>`` (a new parameter), at a key named by the
  archive's content hash: a new release is a new key, so CloudFormation updates the code and
  publishes a new version behind the alias;
- ``<key>`` for every archive (``orgkeypolicy/<version>/<logical id>-<sha256>.zip``), the same
  bytes for the same build: upload them to the bucket of every region the StackSet targets.

Usage (``make stackset``)::

    sam build
    python scripts/stackset.py [--build-dir .aws-sam/build] [--out dist/stackset]
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import click
from samtranslator.parser.parser import Parser  # type: ignore[import-untyped]
from samtranslator.translator.translator import Translator  # type: ignore[import-untyped]
from samtranslator.yaml_helper import yaml_parse  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "handler")]

from orgkeypolicy import __version__  # noqa: E402

CODE_PARAMETER = "CodeBucketPrefix"
REGIONAL_BUCKET = {"Fn::Sub": f"${{{CODE_PARAMETER}}}-${{AWS::Region}}"}
# CreateStackSet's TemplateBody limit; a larger template needs a TemplateURL.
MAX_TEMPLATE_BODY = 51_200
# The SAM types whose code this script packages, and where it sits after the transform.
_CODE = {
    "AWS::Serverless::Function": ("CodeUri", "AWS::Lambda::Function", "Code"),
    "AWS::Serverless::LayerVersion": ("ContentUri", "AWS::Lambda::LayerVersion", "Content"),
}
# What the translator sees as the bucket, replaced by the regional one after the transform:
# given the intrinsic, it would resolve ${AWS::Region} to the region it runs in.
_PLACEHOLDER = "stackset-code-placeholder"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def archive(directory: Path) -> bytes:
    """The directory as a zip archive that depends on nothing but the files' paths, bytes and
    executable bits: the same build gives the same archive, hash and S3 key."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zipped:
        for path in sorted(directory.rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            info = zipfile.ZipInfo(path.relative_to(directory).as_posix(), _ZIP_TIME)
            mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zipped.writestr(info, path.read_bytes())
    return buffer.getvalue()


def code_key(logical_id: str, data: bytes) -> str:
    return f"orgkeypolicy/{__version__}/{logical_id}-{hashlib.sha256(data).hexdigest()}.zip"


def stackset_template(sam: Mapping[str, Any], keys: Mapping[str, str]) -> dict[str, Any]:
    """The SAM template ``sam``, expanded, with the code of each resource named in ``keys``
    (logical ID -> S3 key) read from the regional bucket."""
    template = copy.deepcopy(dict(sam))
    resources = template["Resources"]
    packaged = {name for name, r in resources.items() if r["Type"] in _CODE}
    if packaged != set(keys):
        raise ValueError(f"code for {sorted(packaged)} expected, got {sorted(keys)}")
    for name in packaged:
        uri, _, _ = _CODE[resources[name]["Type"]]
        resources[name]["Properties"][uri] = {"Bucket": _PLACEHOLDER, "Key": keys[name]}
    template["Parameters"] = {
        **template.get("Parameters", {}),
        CODE_PARAMETER: {
            "Type": "String",
            "AllowedPattern": "^[a-z0-9][a-z0-9.-]{1,47}$",
            "ConstraintDescription": "must be the start of an S3 bucket name",
            "Description": (
                "The code is read from the bucket <CodeBucketPrefix>-<region> of each "
                "region, which must hold the archives this template names and let the "
                "organization's accounts read them"
            ),
        },
    }
    translator = Translator(
        None, Parser(), boto_session=boto3.session.Session(region_name="us-east-1")
    )
    expanded: dict[str, Any] = translator.translate(template, {}, get_managed_policy_map=dict)
    for resource in expanded["Resources"].values():
        for _, kind, code in _CODE.values():
            if resource["Type"] == kind:
                resource["Properties"][code]["S3Bucket"] = REGIONAL_BUCKET
    text = json.dumps(expanded)
    if _PLACEHOLDER in text:
        raise ValueError("a code location was not rewritten to the regional bucket")
    return expanded


@dataclass(frozen=True)
class Package:
    template: Path
    archives: dict[str, Path]
    """S3 key -> local file"""


def package(source: Path, build_dir: Path, out: Path) -> Package:
    """Write the StackSet template and the code archives of ``sam build``'s ``build_dir``."""
    sam = yaml_parse(source.read_text())
    keys: dict[str, str] = {}
    archives: dict[str, Path] = {}
    for name, resource in sam["Resources"].items():
        if resource["Type"] not in _CODE:
            continue
        built = build_dir / name
        if not built.is_dir():
            raise click.ClickException(f"{built} is missing: run `sam build` first")
        data = archive(built)
        keys[name] = code_key(name, data)
        archives[keys[name]] = out / keys[name]
        archives[keys[name]].parent.mkdir(parents=True, exist_ok=True)
        archives[keys[name]].write_bytes(data)
    template = out / "template.json"
    body = json.dumps(stackset_template(sam, keys), indent=1) + "\n"
    if len(body.encode()) > MAX_TEMPLATE_BODY:
        click.echo(
            f"template.json is over {MAX_TEMPLATE_BODY} bytes: pass it as --template-url",
            err=True,
        )
    template.write_text(body)
    return Package(template, archives)


@click.command()
@click.option(
    "--template", "source", type=click.Path(path_type=Path), default=ROOT / "template.yaml"
)
@click.option("--build-dir", type=click.Path(path_type=Path), default=ROOT / ".aws-sam" / "build")
@click.option("--out", type=click.Path(path_type=Path), default=ROOT / "dist" / "stackset")
def main(source: Path, build_dir: Path, out: Path) -> None:
    """Write the StackSet template and code archives, and say where to upload them."""
    result = package(source, build_dir, out)
    click.echo(f"Template: {result.template}")
    click.echo("Upload the archives to the bucket of every target region, for example:")
    for key, path in result.archives.items():
        click.echo(f"  aws s3 cp {path} s3://<CodeBucketPrefix>-<region>/{key}")


if __name__ == "__main__":
    main()
