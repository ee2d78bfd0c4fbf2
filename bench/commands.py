"""How fast the command line answers on a 5,000-account organization: ``simulate --org`` over a
~30 KB key policy for every KMS action, and ``plan`` against the function's own DryRun Create.

``.venv/bin/python bench/commands.py [--accounts N] [--latency MS] [--repeats N]``

Every figure is the real console script (``orgkeypolicy``, a process of its own: interpreter
start and imports included) against moto behind the fault proxy, as in ``bench/run.py``; the
organization is ``localaws.seed.seed_large_org``'s. Reported, best of ``--repeats``:

- ``simulate --key K --org``: the whole command, human output and ``--json``; and the same
  principals from a file (``--principals``), which leaves the organization walk out: the
  matrix alone, through the command. Decisions per second are over that last wall time.
- ``plan`` of an ``Auto`` resource over the root (every account: the key takes ``OrgPaths``)
  and of an ``Accounts`` resource over the largest OU whose accounts fit one key policy, each
  against ``lifecycle.apply`` with ``DryRun`` on the same properties (in this process: the
  function's lookup and plan, without the interpreter start).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for entry in (str(REPO / "handler"), str(REPO)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

from bench.local import Local, OrgShape, local_aws  # noqa: E402
from bench.lookup import LookupCase, dry_run, lookup_settings  # noqa: E402
from bench.simulate import ROLE, policy  # noqa: E402
from localaws.seed import CONSENT_TAGS  # noqa: E402
from orgkeypolicy import keypolicy  # noqa: E402
from orgkeypolicy.evaluation import KMS_ACTIONS  # noqa: E402
from orgkeypolicy.settings import Settings  # noqa: E402

SCRIPT = Path(sys.executable).with_name("orgkeypolicy")
# Accounts mode holds ~979 accounts per key policy (docs/development.md).
ACCOUNTS_MODE_MAX = 900


def command(*args: str, repeats: int) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Best wall time of the console script, and its last run."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "handler")}
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        completed = subprocess.run(
            [str(SCRIPT), *args], capture_output=True, text=True, check=False, env=env
        )
        best = min(best, time.perf_counter() - started)
        if completed.returncode not in (0, 2):
            raise RuntimeError(f"orgkeypolicy {' '.join(args)}: {completed.stderr.strip()}")
    return best, completed


def key_with_policy(local: Local) -> tuple[str, int]:
    """A key holding a ~30 KB policy over the organization's own accounts and OUs."""
    org = local.org
    members = {
        account: org.ou_path(org.parent[account])
        for account, state in org.states.items()
        if state == "ACTIVE"
    }
    kms = local.direct("kms")
    arn = str(kms.create_key(Description="bench simulate", Tags=CONSENT_TAGS)["KeyMetadata"]["Arn"])
    account = arn.split(":")[4]
    granted = min(900, len(members) // 2)
    document = policy(members, granted, org.seed, org=org.org_id, key_account=account, key_arn=arn)
    kms.put_key_policy(KeyId=arn, PolicyName="default", Policy=keypolicy.serialize(document))
    return arn, keypolicy.size(document)


def bench_simulate(local: Local, key: str, workdir: Path, repeats: int) -> list[str]:
    # The grants are to a role of each account, in two regions: ask as that role, from one.
    base = ["--region", "us-east-1", "simulate", "--key", key]
    base += ["--context", "aws:RequestedRegion=us-east-1"]
    human, shown = command(*base, "--org", "--role", ROLE, repeats=repeats)
    whole, completed = command(*base, "--org", "--role", ROLE, "--json", repeats=repeats)
    document = json.loads(completed.stdout)
    decisions = len(document["decisions"])
    principals = sorted({d["principal"] for d in document["decisions"]})
    org = local.org
    listed = [
        {
            "arn": arn,
            "org_id": org.org_id,
            "org_paths": [org.ou_path(org.parent[arn.split(":")[4]])],
        }
        for arn in principals
    ]
    path = workdir / "principals.json"
    path.write_text(json.dumps(listed))
    matrix, _ = command(*base, "--principals", str(path), "--json", repeats=repeats)
    matrix_human, _ = command(*base, "--principals", str(path), repeats=repeats)
    start, _ = command("--version", repeats=repeats)
    counts: dict[str, int] = {}
    for decision in document["decisions"]:
        counts[decision["decision"]] = counts.get(decision["decision"], 0) + 1
    summary = " ".join(shown.stdout.split("Decisions by group")[0].split())
    return [
        f"simulate: {len(principals):,} principals x {len(KMS_ACTIONS)} actions = "
        f"{decisions:,} decisions ({', '.join(f'{k} {v:,}' for k, v in sorted(counts.items()))})",
        f"  human output: {summary.split(': ', 1)[1]}",
        f"  --org, human output:              {human:6.2f} s",
        f"  --org --json ({len(completed.stdout) / 1e6:.1f} MB):        {whole:6.2f} s",
        f"  --principals FILE --json (matrix): {matrix:6.2f} s  "
        f"-> {decisions / matrix:,.0f} decisions/s",
        f"  --principals FILE, human output:   {matrix_human:6.2f} s",
        f"  orgkeypolicy --version (start):    {start:6.2f} s",
    ]


def bench_plan(local: Local, workdir: Path, repeats: int) -> list[str]:
    """On a key of its own (the default key policy), as a first deploy finds it."""
    org = local.org
    key = str(
        local.direct("kms").create_key(Description="bench plan", Tags=CONSENT_TAGS)["KeyMetadata"][
            "Arn"
        ]
    )
    large = org.largest_subtree(ACCOUNTS_MODE_MAX)
    cases = [
        ("root, Auto", LookupCase("root", (org.root_id,), True, "Auto")),
        (
            f"largest OU <= {ACCOUNTS_MODE_MAX} accounts, Accounts",
            LookupCase("ou", (large,), True, "Accounts"),
        ),
    ]
    lines = []
    settings = lookup_settings(Settings().org_workers)
    for name, case in cases:
        props = {
            "KeyIds": [key],
            "OrganizationalUnitIds": list(case.named),
            "PrincipalMode": case.mode,
        }
        path = workdir / f"{case.name}.json"
        path.write_text(json.dumps(props))
        wall, completed = command(
            "--region", "us-east-1", "plan", "--properties", str(path), "--json", repeats=repeats
        )
        document = json.loads(completed.stdout)
        (planned,) = document["keys"]
        runs = [dry_run(local, case, key, settings) for _ in range(repeats)]
        best = min(runs, key=lambda run: run.apply_wall)
        lines.append(
            f"plan, {name}: {len(document['accounts_granted']):,} accounts, mode "
            f"{planned['mode']}, {len(planned['access']):,} principals gain access, "
            f"{planned['size_after']:,} bytes"
        )
        lines.append(f"  orgkeypolicy plan --json:          {wall:6.2f} s")
        lines.append(
            f"  DryRun Create (lifecycle.apply):   {best.apply_wall:6.2f} s "
            f"(its organization calls: {best.org_calls}, {best.lookup_wall:.2f} s)"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/commands.py", description=__doc__)
    parser.add_argument("--accounts", type=int, default=5000)
    parser.add_argument("--ous", type=int, default=500)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.0, help="ms added per call (0)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    shape = OrgShape(args.accounts, args.ous, args.depth)
    with local_aws(shape, args.latency / 1000) as local, tempfile.TemporaryDirectory() as work:
        key, size = key_with_policy(local)
        print(
            f"organization: {local.org.account_count:,} accounts, {len(local.org.ou_ids)} OUs; "
            f"proxy latency {args.latency:.0f} ms; key policy {size:,} bytes; "
            f"best of {args.repeats}"
        )
        for line in bench_simulate(local, key, Path(work), args.repeats):
            print(line)
        for line in bench_plan(local, Path(work), args.repeats):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
