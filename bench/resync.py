"""Re-sync at scale: 200 resources over 500 keys in the 5,000-account organization, 5 % of the
accounts moved, then one re-sync, and the same drift fixed by re-deploying every resource one
by one (``lifecycle.apply``), for comparison.

``make bench-resync`` (``bench/run.py resync``); see ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import boto3

from bench.bounds import list_calls_lower_bound
from bench.local import Local, OrgShape, add_organization_arguments, local_aws
from bench.lookup import repeated_listings
from bench.report import _ops, _s, _table, save
from localaws.proxy import Call
from localaws.seed import ACTIVE, CONSENT_TAGS, LargeOrg
from orgkeypolicy import lifecycle, resync
from orgkeypolicy.settings import Deadline, Settings
from orgkeypolicy.statements import sid_prefix

RESULTS = Path(__file__).resolve().parent / "results"
KMS_PUT_QUOTA = 15.0
"""PutKeyPolicy requests per second KMS allows per account and region (its documented quota)."""
# A resource grants at most this many accounts, so that two resources sharing a key fit its
# 32 KB policy in Accounts mode (about 960 account principals).
MAX_ACCOUNTS_PER_RESOURCE = 400
STACK_TEMPLATE = json.dumps({"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}}})


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py resync",
        description="One re-sync of many recorded resources after accounts moved, against "
        "re-deploying each resource, on a synthetic organization in moto behind a proxy.",
    )
    add_organization_arguments(parser, seed_help="shape and draws (0)")
    parser.add_argument("--resources", type=int, default=200, help="recorded resources (200)")
    parser.add_argument("--keys", type=int, default=500, help="KMS keys (500)")
    parser.add_argument("--moved", type=float, default=0.05, help="share of accounts moved")
    parser.add_argument(
        "--verify-delay", type=float, default=0.2, help="VERIFY_DELAY_SECONDS (0.2; 1 deployed)"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON output directory")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Resource:
    logical_id: str
    stack_id: str
    units: tuple[str, ...]
    keys: tuple[str, ...]

    @property
    def prefix(self) -> str:
        return sid_prefix(self.stack_id, self.logical_id)

    def properties(self) -> dict[str, Any]:
        return {
            "KeyIds": list(self.keys),
            "OrganizationalUnitIds": list(self.units),
            "PrincipalMode": "Accounts",
        }


@dataclass
class Phase:
    """One way of bringing every resource back to the organization as it is."""

    name: str
    wall: float
    org_calls: int
    org_by_operation: dict[str, int]
    repeated_listings: int
    puts: int
    expected_puts: int
    keys_changed: int
    put_span: float
    peak_puts_per_second: int
    calls_by_operation: dict[str, int] = field(default_factory=dict)

    @property
    def put_rate(self) -> float:
        return self.puts / self.put_span if self.put_span else 0.0


@dataclass
class ResyncResults:
    settings: dict[str, Any]
    organization: dict[str, Any] = field(default_factory=dict)
    setup: dict[str, Any] = field(default_factory=dict)
    org_lower_bound: int = 0
    resync: dict[str, Any] = field(default_factory=dict)
    redeploy: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    converged: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


# --- The organization and the resources -------------------------------------------------------


def moved_copy(org: LargeOrg) -> LargeOrg:
    """A copy whose account placement can change without touching ``org``."""
    return replace(
        org,
        accounts={unit: list(accounts) for unit, accounts in org.accounts.items()},
        parent=dict(org.parent),
    )


def granted(org: LargeOrg, resource: Resource) -> set[str]:
    return {a for unit in resource.units for a in org.accounts_under(unit, include_suspended=False)}


def draw_resources(
    org: LargeOrg, keys: list[str], stacks: list[str], count: int, draw: random.Random
) -> list[Resource]:
    """``count`` resources naming one to three OUs of a shared pool (so that their subtrees
    overlap, an OU sometimes together with one below it), over ``keys``: each key belongs to
    one resource, and every fourth resource also shares a key with the next one."""
    pool = [
        ou for ou in org.ou_ids if 5 <= len(org.accounts_under(ou, include_suspended=False)) <= 250
    ]
    pool = draw.sample(pool, min(len(pool), max(20, count // 3)))
    resources: list[Resource] = []
    for index in range(count):
        units = tuple(draw.sample(pool, draw.randint(1, 3)))
        inner = [ou for ou in org.subtree(units[0])[1:] if ou in pool]
        if inner and draw.random() < 0.2:
            units += (draw.choice(inner),)
        units = tuple(dict.fromkeys(units))
        while len({a for u in units for a in org.accounts_under(u)}) > MAX_ACCOUNTS_PER_RESOURCE:
            units = units[:-1]
        owned = [key for position, key in enumerate(keys) if position % count == index]
        if index % 4 == 0 and count > 1:
            owned.append(keys[(index + 1) % count])
        resources.append(
            Resource(
                f"Share{index:03d}",
                stacks[index % len(stacks)],
                units,
                tuple(dict.fromkeys(owned)),
            )
        )
    return resources


def move_accounts(local: Local, org: LargeOrg, share: float, draw: random.Random) -> int:
    """Move ``share`` of the ACTIVE accounts to other OUs (``org`` follows); how many."""
    client = local.direct("organizations")
    movable = [
        account
        for account, state in org.states.items()
        if state == ACTIVE and account != org.management_account_id
    ]
    chosen = draw.sample(movable, round(len(movable) * share))
    for account in chosen:
        source = org.parent[account]
        destination = draw.choice([ou for ou in org.ou_ids if ou != source])
        client.move_account(
            AccountId=account, SourceParentId=source, DestinationParentId=destination
        )
        org.accounts[source].remove(account)
        org.accounts[destination].append(account)
        org.parent[account] = destination
    return len(chosen)


# --- Measuring --------------------------------------------------------------------------------


def _peak_per_second(calls: Sequence[Call]) -> int:
    """The most calls that started within any one second."""
    started = sorted(call.started for call in calls)
    peak, first = 0, 0
    for last, moment in enumerate(started):
        while moment - started[first] >= 1.0:
            first += 1
        peak = max(peak, last - first + 1)
    return peak


def measure(local: Local, name: str, wall: float, expected_puts: int, keys_changed: int) -> Phase:
    calls = local.proxy.calls
    org = [call for call in calls if call.service == "organizations"]
    puts = [call for call in calls if call.name == "kms:PutKeyPolicy" and not call.injected]
    span = (max(c.started for c in puts) - min(c.started for c in puts)) if puts else 0.0
    return Phase(
        name=name,
        wall=wall,
        org_calls=len(org),
        org_by_operation=dict(Counter(call.operation for call in org)),
        repeated_listings=repeated_listings(org),
        puts=len(puts),
        expected_puts=expected_puts,
        keys_changed=keys_changed,
        put_span=span,
        peak_puts_per_second=_peak_per_second(puts),
        calls_by_operation=dict(Counter(call.name for call in calls)),
    )


def changes(
    before: LargeOrg, after: LargeOrg, resources: list[Resource]
) -> tuple[int, int, list[Resource]]:
    """Writes a correct run makes (one per changed resource and key), distinct keys changed,
    and the resources whose grant changed."""
    changed = [r for r in resources if granted(before, r) != granted(after, r)]
    return (
        sum(len(r.keys) for r in changed),
        len({key for r in changed for key in r.keys}),
        changed,
    )


def check_keys(local: Local, org: LargeOrg, resources: list[Resource]) -> int:
    """Every key holds exactly the grant of every resource on it; the keys checked."""
    kms = local.direct("kms")
    holders: dict[str, list[Resource]] = {}
    for resource in resources:
        for key in resource.keys:
            holders.setdefault(key, []).append(resource)
    for key, owners in holders.items():
        policy = json.loads(kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"])
        for resource in owners:
            statements = [
                s for s in policy["Statement"] if str(s.get("Sid", "")).startswith(resource.prefix)
            ]
            principals = [p for s in statements for p in s["Principal"]["AWS"]]
            found = {arn.split(":")[4] for arn in principals}
            if found != granted(org, resource):
                raise AssertionError(f"{key}: {resource.logical_id} grants {len(found)} accounts")
    return len(holders)


def deploy(resource: Resource, settings: Settings, request_type: str = "Create") -> None:
    request = lifecycle.Request(
        request_type=request_type,
        stack_id=resource.stack_id,
        logical_id=resource.logical_id,
        request_id=str(uuid.uuid4()),
        properties=resource.properties(),
        old_properties=resource.properties() if request_type == "Update" else None,
        physical_id=None if request_type == "Create" else resource.prefix,
    )
    lifecycle.apply(request, boto3.Session(), settings, Deadline(600))


# --- The run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> ResyncResults:
    draw = random.Random(args.seed)
    latency = args.latency / 1000
    # The tuning the function runs with; the environment of the local AWS comes in below.
    settings = replace(Settings(), verify_delay=args.verify_delay)
    results = ResyncResults(
        settings={
            "latency_ms": args.latency,
            "accounts": args.accounts,
            "ous": args.ous,
            "resources": args.resources,
            "keys": args.keys,
            "moved": args.moved,
            "verify_delay": args.verify_delay,
            "write_rate": settings.write_rate,
            "resource_workers": settings.resource_workers,
            "org_workers": settings.org_workers,
        }
    )
    started = time.perf_counter()
    with local_aws(OrgShape(args.accounts, args.ous, 5, args.seed), latency) as local:
        # The registry table, and no Access Analyzer review (moto has none), come with it.
        settings = replace(Settings.from_environment(), verify_delay=args.verify_delay)
        org = moved_copy(local.org)
        results.organization = {
            "accounts": org.account_count,
            "ous": len(org.ou_ids),
            "seed_seconds": local.seed_seconds,
        }
        _progress(f"{args.keys} keys, stacks, {args.resources} Creates (no latency)")
        local.set_latency(0.0)
        set_up = time.perf_counter()
        kms = local.direct("kms")
        keys = [
            kms.create_key(Description=f"resync bench {i}", Tags=CONSENT_TAGS)["KeyMetadata"]["Arn"]
            for i in range(args.keys)
        ]
        cloudformation = local.direct("cloudformation")
        stacks = [
            cloudformation.create_stack(StackName=f"consumer-{i}", TemplateBody=STACK_TEMPLATE)[
                "StackId"
            ]
            for i in range(10)
        ]
        resources = draw_resources(org, keys, stacks, args.resources, draw)
        for resource in resources:
            deploy(resource, settings)
        named = sorted({unit for resource in resources for unit in resource.units})
        results.setup = {
            "seconds": time.perf_counter() - set_up,
            "named_units": len(named),
            "keys_per_resource": args.keys / args.resources,
            "accounts_granted_mean": sum(len(granted(org, r)) for r in resources) / len(resources),
        }

        _progress(f"moving {args.moved:.0%} of the accounts, then one re-sync")
        before = moved_copy(org)
        moved = move_accounts(local, org, args.moved, draw)
        expected, keys_changed, changed = changes(before, org, resources)
        results.org_lower_bound = 1 + list_calls_lower_bound(org, named, include_nested=True)
        local.set_latency(latency)
        local.proxy.reset_log()
        clock = time.perf_counter()
        report = resync.run(
            boto3.Session(), settings, apply=True, run_id=f"bench-{uuid.uuid4().hex[:8]}"
        )
        wall = time.perf_counter() - clock
        phase = measure(local, "re-sync (one run)", wall, expected, keys_changed)
        results.resync = {**asdict(phase), "put_rate": phase.put_rate, "moved": moved}
        results.summary = report.summary()
        results.converged["after_resync"] = check_keys(local, org, resources)
        results.converged["resources_changed"] = len(changed)

        _progress(f"moving another {args.moved:.0%}, then {args.resources} re-deploys in turn")
        before = moved_copy(org)
        local.set_latency(0.0)
        moved = move_accounts(local, org, args.moved, draw)
        expected, keys_changed, _ = changes(before, org, resources)
        local.set_latency(latency)
        local.proxy.reset_log()
        clock = time.perf_counter()
        for resource in resources:
            deploy(resource, settings, "Update")
        wall = time.perf_counter() - clock
        phase = measure(local, "re-deploy each resource", wall, expected, keys_changed)
        results.redeploy = {**asdict(phase), "put_rate": phase.put_rate, "moved": moved}
        results.converged["after_redeploy"] = check_keys(local, org, resources)
        local.proxy.reset_log()
        after = resync.run(boto3.Session(), settings, apply=False)
        results.converged["verify_drifted"] = after.drifted
    results.seconds = time.perf_counter() - started
    return results


# --- The report -------------------------------------------------------------------------------


def markdown(results: ResyncResults) -> str:
    s, r, d = results.settings, results.resync, results.redeploy
    lines = [
        "# Re-sync benchmark",
        "",
        f"{s['resources']} resources over {s['keys']} keys (Accounts mode, 1-3 overlapping OUs "
        f"each, {results.setup.get('named_units')} OUs named in all), in an organization of "
        f"{results.organization.get('accounts')} accounts and {results.organization.get('ous')} "
        f"OUs; {s['moved']:.0%} of the accounts moved between OUs before each phase. "
        f"{s['latency_ms']:.0f} ms per call; VERIFY_DELAY_SECONDS {s['verify_delay']}; "
        f"KMS_WRITE_RATE {s['write_rate']}/s; RESYNC_CONCURRENCY {s['resource_workers']}.",
        "",
    ]
    rows = []
    for phase in (r, d):
        rows.append(
            [
                phase["name"],
                _s(phase["wall"]),
                f"{phase['org_calls']} ({_ops(phase['org_by_operation'])})",
                phase["repeated_listings"],
                f"{phase['puts']} / {phase['expected_puts']}",
                phase["keys_changed"],
                f"{phase['put_rate']:.1f}/s, peak {phase['peak_puts_per_second']} in 1 s",
            ]
        )
    lines += _table(
        [
            "phase",
            "wall",
            "Organizations calls",
            "repeated listings",
            "PutKeyPolicy / expected",
            "keys changed",
            "PutKeyPolicy rate",
        ],
        rows,
    )
    ratio = d["wall"] / r["wall"] if r["wall"] else float("nan")
    met_calls = r["org_calls"] == results.org_lower_bound and r["repeated_listings"] == 0
    met_puts = r["puts"] == r["expected_puts"]
    met_rate = r["peak_puts_per_second"] <= KMS_PUT_QUOTA
    lines += [
        "",
        f"- Organizations calls of the re-sync: {r['org_calls']}, against a lower bound of "
        f"{results.org_lower_bound} (every named subtree walked once, pages of 20, and one "
        f"DescribeOrganization): {'met' if met_calls else 'MISSED'}. The re-deploys made "
        f"{d['org_calls']}.",
        f"- PutKeyPolicy: {r['puts']} for {r['expected_puts']} resource-key pairs whose grant "
        f"changed ({r['keys_changed']} distinct keys): {'equal' if met_puts else 'NOT EQUAL'}.",
        f"- PutKeyPolicy rate: {r['put_rate']:.1f}/s over the writes, at most "
        f"{r['peak_puts_per_second']} within any second, against KMS's {KMS_PUT_QUOTA:.0f}/s: "
        f"{'met' if met_rate else 'MISSED'}.",
        f"- Wall time: re-deploying every resource one by one took {ratio:.1f} x the re-sync.",
        f"- Summary returned: {json.dumps(results.summary)}",
        f"- Keys checked against the organization afterwards: {results.converged}.",
    ]
    return "\n".join(lines)


def _progress(message: str) -> None:
    print(f"... {message}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    text = markdown(results)
    print()
    print(text)
    save(args.results, "resync", results, text)
    return 0 if results.converged.get("verify_drifted") is False else 1
