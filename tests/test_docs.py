"""The documentation builds, its links resolve, and its Sid contract matches the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from markdown_it import MarkdownIt
from markdown_it.token import Token

from orgkeypolicy.properties import PrincipalMode, parse_properties
from orgkeypolicy.statements import Grantees, build_statements, sid_prefix

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
REFERENCE = REPO / "docs" / "reference.md"
# Any attempt to reach the network during the build goes to a closed local port and fails.
NO_NETWORK = "http://127.0.0.1:9"


def test_site_builds_strictly_and_offline(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {name: value for name, value in os.environ.items() if name.lower() != "no_proxy"}
    env |= dict.fromkeys(("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"), NO_NETWORK)
    env["NO_MKDOCS_2_WARNING"] = "1"
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert build.returncode == 0, build.stderr + build.stdout
    pages = {p.parent.name for p in site.glob("*/index.html")}
    assert pages == {
        "reference",
        "deployment",
        "rollout",
        "safety",
        "cli",
        "resync",
        "validation",
        "local",
        "development",
        "changelog",
    }
    changelog = (site / "changelog" / "index.html").read_text(encoding="utf-8")
    assert "0.1.0" in changelog, "CHANGELOG.md was not included"
    assert "--8&lt;--" not in changelog
    for page in site.rglob("*.html"):
        assert "fonts.googleapis.com" not in page.read_text(encoding="utf-8"), page


def _link_targets(tokens: list[Token]) -> list[str]:
    targets = []
    for token in tokens:
        if token.type == "link_open":
            targets.append(str(token.attrs["href"]))
        elif token.type == "image":
            targets.append(str(token.attrs["src"]))
        targets += _link_targets(token.children or [])
    return targets


def test_readme_relative_links_resolve_to_repository_files() -> None:
    targets = _link_targets(MarkdownIt("commonmark").parse(README.read_text(encoding="utf-8")))
    relative = [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]
    assert relative, "README.md links to no page of the documentation"
    for target in relative:
        path = (REPO / target.partition("#")[0]).resolve()
        assert path.is_relative_to(REPO), f"README.md links outside the repository: {target}"
        assert path.exists(), f"README.md links to {target}, which does not exist"


def test_documented_sid_prefix_example_matches_the_code() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    stack_id = re.search(r"^StackId:\s+(\S+)$", text, re.M)
    logical_id = re.search(r"^LogicalResourceId:\s+(\S+)$", text, re.M)
    prefix = re.search(r"^Sid prefix:\s+(\S+)$", text, re.M)
    assert stack_id and logical_id and prefix, "the Sid prefix example is missing"
    assert sid_prefix(stack_id[1], logical_id[1]) == prefix[1]
    assert re.fullmatch(r"OrgKeyPolicy[0-9a-f]{16}", prefix[1])


def test_documented_sid_suffixes_are_the_ones_written() -> None:
    table = REFERENCE.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `<prefix>(\w+)` \|", table, re.M))
    spec = parse_properties(
        {
            "KeyIds": ["1234abcd-12ab-34cd-56ef-1234567890ab"],
            "OrganizationalUnitIds": ["ou-ab12-11111111"],
            "AccountIds": ["333333333333"],
            "AllowGrants": "true",
        }
    )
    grantees = Grantees(
        organization_id="o-abcdefghij",
        partition="aws",
        accounts=("111111111111", "333333333333"),
        unit_paths=("o-abcdefghij/r-ab12/ou-ab12-11111111/",),
        outside_units=("333333333333",),
    )
    prefix = sid_prefix("arn:aws:cloudformation:us-east-1:123456789012:stack/s/uuid", "Share")
    written = {
        statement["Sid"].removeprefix(prefix)
        for mode in (PrincipalMode.ACCOUNTS, PrincipalMode.ORG_PATHS)
        for statement in build_statements(spec, prefix, grantees, mode)
    }
    assert documented == written == {"Use", "Grants", "UsePaths", "GrantsPaths"}
