"""Runs every measurement once, prints the Markdown report and writes the JSON results."""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import artifact, bounds, keys, lookup, report
from bench.local import OrgShape, add_organization_arguments, local_aws
from localaws import patched_environment
from localaws.cfn import CloudFormation
from orgkeypolicy.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"


def _workers(text: str) -> list[int]:
    values = sorted({int(part) for part in text.split(",") if part.strip()})
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    default_workers = Settings().org_workers
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Organization lookup, key writes, cold start and layer size, on a local "
        "synthetic organization in moto behind a latency-adding proxy.",
    )
    add_organization_arguments(parser, seed_help="shape of the organization (0)")
    parser.add_argument("--depth", type=int, default=5, help="OU levels below the root (5)")
    parser.add_argument(
        "--workers",
        type=_workers,
        default=[1, 4, 8, 16],
        help="walk concurrencies to compare (1,4,8,16; the handler's default is added)",
    )
    parser.add_argument(
        "--default-workers",
        type=int,
        default=default_workers,
        help=f"concurrency of the resource-level runs (Settings.org_workers: {default_workers})",
    )
    parser.add_argument("--keys", type=int, default=20, help="keys of the many-keys Create (20)")
    parser.add_argument("--repeats", type=int, default=3, help="Creates per key count (3)")
    parser.add_argument(
        "--verify-delay", type=float, default=0.2, help="VERIFY_DELAY_SECONDS (0.2; 1 deployed)"
    )
    parser.add_argument("--import-runs", type=int, default=5, help="fresh imports (5)")
    parser.add_argument("--skip-build", action="store_true", help="no sam build")
    parser.add_argument(
        "--throttle-rps",
        type=float,
        default=0.0,
        help="also walk the large OU under an emulated rate limit of this many calls/s",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON output directory")
    return parser.parse_args(argv)


@dataclass
class Results:
    """Everything measured, as written to JSON."""

    settings: dict[str, Any]
    machine: dict[str, Any]
    organization: dict[str, Any] = field(default_factory=dict)
    paging: dict[str, Any] = field(default_factory=dict)
    lookups: list[dict[str, Any]] = field(default_factory=list)
    walk_unit: str = ""
    critical_path: dict[str, Any] = field(default_factory=dict)
    walks: list[dict[str, Any]] = field(default_factory=list)
    ideal_walks: list[dict[str, Any]] = field(default_factory=list)
    throttled: list[dict[str, Any]] = field(default_factory=list)
    key_units: list[dict[str, Any]] = field(default_factory=list)
    keys: list[dict[str, Any]] = field(default_factory=list)
    imports: list[dict[str, Any]] = field(default_factory=list)
    build: dict[str, Any] = field(default_factory=dict)
    capacity: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def _lookup_cases(org: Any) -> list[lookup.LookupCase]:
    big = org.largest_subtree(max_accounts=900)
    busiest = org.busiest_ou()
    inner = max(org.subtree(big)[1:], key=lambda ou: len(org.accounts_under(ou)), default=big)
    return [
        lookup.LookupCase("root, nested", (org.root_id,), include_nested=True, mode="Auto"),
        lookup.LookupCase("large OU, nested", (big,), include_nested=True, mode="Accounts"),
        lookup.LookupCase("large OU, not nested", (big,), include_nested=False, mode="Accounts"),
        lookup.LookupCase(
            "busiest OU, not nested", (busiest,), include_nested=False, mode="Accounts"
        ),
        lookup.LookupCase("large OU, nested", (big,), include_nested=True, mode="OrgPaths"),
        lookup.LookupCase(
            "large OU + an OU inside it", (big, inner), include_nested=True, mode="Accounts"
        ),
        lookup.LookupCase(
            "deepest OU, nested", (org.deepest_ou(),), include_nested=True, mode="Accounts"
        ),
    ]


def run(args: argparse.Namespace) -> Results:
    latency = args.latency / 1000
    workers = sorted({*args.workers, args.default_workers})
    shape = OrgShape(args.accounts, args.ous, args.depth, args.seed)
    results = Results(
        settings={
            "latency_ms": args.latency,
            "accounts": args.accounts,
            "ous": args.ous,
            "depth": args.depth,
            "seed": args.seed,
            "workers": workers,
            "default_workers": args.default_workers,
            "key_workers": Settings().key_workers,
            "keys": args.keys,
            "repeats": args.repeats,
            "verify_delay": args.verify_delay,
        },
        machine=_machine(),
    )
    started = time.perf_counter()
    # First, before any thread exists in this process: moto's process is forked.
    with local_aws(shape, latency) as local:
        org = local.org
        results.organization = {
            "org_id": org.org_id,
            "root": org.root_id,
            "accounts_including_management": org.account_count,
            "ous": len(org.ou_ids),
            "max_depth": max(org.depth.values()),
            "seed_seconds": local.seed_seconds,
        }
        _progress("moto paging check")
        results.paging = asdict(lookup.moto_paging(local))

        settings = lookup.lookup_settings(args.default_workers)
        [probe_key] = keys.create_keys(local, 1)
        for case in _lookup_cases(org):
            _progress(f"DryRun lookup: {case.name} ({case.mode})")
            results.lookups.append(_with_met(lookup.dry_run(local, case, probe_key, settings)))

        unit = org.root_id
        results.walk_unit = unit
        path = bounds.critical_path(org, [unit], include_nested=True)
        results.critical_path = {
            "chain_pages": path.chain_pages,
            "chain": list(path.chain),
            "calls": path.calls,
            "tree_depth": bounds.tree_depth(org, unit),
        }
        for delay in (latency, 0.0):
            local.set_latency(delay)
            _progress(f"sequential walk of the root at {delay * 1000:.0f} ms")
            results.walks.append(asdict(lookup.time_sequential(local, unit)))
            for count in workers:
                _progress(f"concurrent walk, {count} workers, {delay * 1000:.0f} ms")
                results.walks.append(asdict(lookup.time_concurrent(local, unit, count)))
        local.set_latency(latency)
        # One worker is calls x latency by construction: not worth its half minute.
        for count in (count for count in workers if count > 1):
            _progress(f"latency-only walk, {count} workers")
            results.ideal_walks.append(asdict(lookup.time_latency_only(org, unit, count, latency)))

        big = org.largest_subtree(max_accounts=900)
        if args.throttle_rps > 0:
            for count in workers:
                _progress(f"throttled walk at {args.throttle_rps:g}/s, {count} workers")
                results.throttled.append(
                    asdict(lookup.time_throttled(local, big, count, args.throttle_rps))
                )

        small = _small_leaf(org)
        for label, unit in (("large OU subtree", big), ("small leaf OU", small)):
            granted = sum(org.states[a] == "ACTIVE" for a in org.accounts_under(unit))
            results.key_units.append(
                {
                    "label": label,
                    "unit": unit,
                    "accounts": granted,
                    "lookup_calls": 1 + org.min_list_calls(unit),
                }
            )
        args.results.mkdir(parents=True, exist_ok=True)
        with (
            keys.handler_log_path(args.results).open("w") as log,
            CloudFormation() as cfn,
            patched_environment(cfn.environment(), unset=()),
        ):
            app = keys.load_handler(args.verify_delay, log)
            for target in results.key_units:
                _progress(
                    f"Create through the handler, {target['label']}: 1 and {args.keys} keys"
                    f" x {args.repeats}"
                )
                for key_run in keys.time_creates(
                    local, app, cfn, target["unit"], (1, args.keys), args.repeats, log
                ):
                    results.keys.append(
                        {
                            **asdict(key_run),
                            "unit": target["unit"],
                            "wall": key_run.wall,
                            "lookup": key_run.lookup,
                            "key_phase": key_run.key_phase,
                        }
                    )

    _progress("cold imports" + ("" if args.skip_build else " and sam build"))
    measured = artifact.measure(args.import_runs, build=not args.skip_build)
    results.imports = [
        {**asdict(i), "median": i.median, "process_median": i.process_median}
        for i in measured.imports
    ]
    results.build = asdict(measured.build)
    results.capacity = {
        "accounts_mode": bounds.accounts_per_key_policy(),
        "accounts_mode_with_grants": bounds.accounts_per_key_policy(allow_grants=True),
    }
    results.seconds = time.perf_counter() - started
    return results


def _small_leaf(org: Any) -> str:
    """A leaf OU with a few ACTIVE accounts: its lookup is three calls, so a Create on it is
    nearly all key work."""
    return str(
        next(
            ou
            for ou in org.ou_ids
            if not org.children[ou]
            and 0 < sum(org.states[a] == "ACTIVE" for a in org.accounts[ou]) <= 20
        )
    )


def _with_met(run: lookup.LookupRun) -> dict[str, Any]:
    return {**asdict(run), "met": run.met, "moto_only_calls": run.moto_only_calls}


def _progress(message: str) -> None:
    print(f"... {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    text = report.markdown(results)
    print()
    print(text)
    saved = report.save(args.results, "bench", results, text)
    print(f"\nResults: {saved} (and bench-latest.json, bench-latest.md)")
    return 0
