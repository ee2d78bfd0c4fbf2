"""The Markdown report of one run."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.main import Results

_SHORT = {
    "DescribeOrganization": "DescribeOrg",
    "ListOrganizationalUnitsForParent": "ListOUs",
    "ListAccountsForParent": "ListAccounts",
    "DescribeOrganizationalUnit": "DescribeOU",
    "ListParents": "ListParents",
    "DescribeAccount": "DescribeAccount",
}


def save(directory: Path, name: str, results: Any, text: str) -> Path:
    """Write ``results`` as ``<name>-<UTC time>.json`` and ``<name>-latest.json``, and ``text``
    as ``<name>-latest.md``, into ``directory``; the path of the time-stamped file."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    payload = json.dumps(asdict(results), indent=2, default=str) + "\n"
    for file in (f"{name}-{stamp}.json", f"{name}-latest.json"):
        (directory / file).write_text(payload)
    (directory / f"{name}-latest.md").write_text(text + "\n")
    return directory / f"{name}-{stamp}.json"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _s(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _mb(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


def _ok(met: bool) -> str:
    return "met" if met else "MISSED"


def _ops(by_operation: dict[str, int]) -> str:
    order = list(_SHORT)
    items = sorted(by_operation.items(), key=lambda i: order.index(i[0]) if i[0] in order else 99)
    return " + ".join(f"{_SHORT.get(op, op)} {count}" for op, count in items)


class _Walks:
    """The walk rows of a run, and the bounds they are compared with."""

    def __init__(self, results: Results) -> None:
        self.latency = results.settings["latency_ms"] / 1000
        self.path = results.critical_path
        self.rows = results.walks
        self.sequential = self._find(0, self.latency)
        self.sequential_zero = self._find(0, 0.0)
        zero = self.sequential_zero
        # What one call costs here beyond the modelled latency: client, proxy and moto.
        self.overhead = zero["wall"] / zero["calls"] if zero and zero["calls"] else 0.0

    def _find(self, workers: int, latency: float) -> dict[str, Any] | None:
        return next(
            (
                row
                for row in self.rows
                if row["workers"] == workers and math.isclose(row["latency"], latency)
            ),
            None,
        )

    def critical(self, workers: int) -> float:
        """The brief's bound: max(chain pages x latency, calls x latency / workers)."""
        concurrency = max(1, workers)
        return float(
            max(
                self.path["chain_pages"] * self.latency,
                self.path["calls"] * self.latency / concurrency,
            )
        )

    def emulator_bound(self, workers: int) -> float:
        """The same bound with each call costing latency + this machine's per-call overhead,
        and never below the same walk at zero latency (moto's own CPU floor)."""
        per_call = self.latency + self.overhead
        zero = self._find(workers, 0.0)
        return float(
            max(
                self.path["chain_pages"] * per_call,
                self.path["calls"] * per_call / max(1, workers),
                zero["wall"] if zero else 0.0,
            )
        )

    def table(self) -> list[str]:
        rows = []
        base = self.sequential["wall"] if self.sequential else float("nan")
        for row in self.rows:
            if not math.isclose(row["latency"], self.latency):
                continue
            workers = row["workers"]
            zero = self._find(workers, 0.0)
            critical = self.critical(workers)
            aware = self.emulator_bound(workers)
            rows.append(
                [
                    "sequential" if workers == 0 else f"walk, {workers}",
                    _s(row["wall"]),
                    _s(zero["wall"]) if zero else "n/a",
                    f"{base / row['wall']:.1f}x",
                    f"{row['calls'] / row['wall']:.0f}",
                    row["peak_in_flight"],
                    _s(critical),
                    f"{row['wall'] / critical:.2f}",
                    _ok(row["wall"] <= 1.5 * critical),
                    _s(aware),
                    f"{row['wall'] / aware:.2f}",
                ]
            )
        return _table(
            [
                "Walk, workers",
                f"Wall @ {self.latency * 1000:.0f} ms",
                "Wall @ 0 ms",
                "Speed-up vs sequential",
                "Calls/s",
                "Peak in flight",
                "Critical path (CP)",
                "Wall / CP",
                "Wall <= 1.5 x CP",
                "Emulator-aware bound",
                "Wall / that",
            ],
            rows,
        )


def markdown(results: Results) -> str:
    s = results.settings
    org = results.organization
    out: list[str] = [
        "# OrgKeyPolicy benchmark",
        "",
        f"Organization: {org['accounts_including_management']} accounts (management included),"
        f" {org['ous']} OUs, {org['max_depth']} levels deep (seed {s['seed']}), in moto"
        f" (its own process) behind FaultProxy adding {s['latency_ms']:g} ms to every call."
        f" Machine: {results.machine['cpus']} CPUs, Python {results.machine['python']}."
        f" Total run time {results.seconds:.0f} s.",
        "",
    ]
    paging = results.paging
    out += [
        f"moto pages at 20: ListAccountsForParent on an OU of {paging['accounts_in_parent']}"
        f" accounts returns {paging['default_page']} (NextToken: {paging['has_next_token']});"
        f" MaxResults=21 is {paging['max_results_21']}.",
        "",
    ]

    # 1. Calls
    out += [
        f"## 1. Organizations calls per lookup (lifecycle.apply, DryRun, {s['default_workers']}"
        " workers)",
        "",
    ]
    rows = [
        [
            run["case"],
            f"{run['mode']} -> {run['modes_chosen']}" if run["mode"] == "Auto" else run["mode"],
            run["accounts_granted"],
            f"{run['org_calls']} ({_ops(run['calls_by_operation'])})",
            run["lower_bound"],
            run["allowed"],
            run["repeated_listings"],
            _s(run["lookup_wall"]),
            _ok(run["met"])
            + (
                f" (ListParents {run['moto_only_calls']} left out: moto lacks OU Path)"
                if run["moto_only_calls"]
                else ""
            ),
        ]
        for run in results.lookups
    ]
    out += _table(
        [
            "Named units",
            "PrincipalMode",
            "Accounts granted",
            "Organizations calls",
            "Lower bound (pages + DescribeOrg)",
            "Allowed (+1 per named OU)",
            "Units listed twice",
            "Lookup wall",
            "Target",
        ],
        rows,
    )
    out.append("")

    # 2. Walls
    walks = _Walks(results)
    path = results.critical_path
    out += [
        f"## 2. Wall time of the walk of the root ({path['calls']} calls at the lower bound)",
        "",
        f"Critical path: the slowest chain needs {path['chain_pages']} calls one after another"
        f" ({len(path['chain'])} units, tree depth {path['tree_depth']}) ="
        f" {_s(path['chain_pages'] * walks.latency)}; CP = max(that, calls x latency /"
        " workers). Emulator-aware bound: the same with each call costing latency +"
        f" {_s(walks.overhead)} (the sequential per-call cost at 0 ms here), and not below the"
        " same walk at 0 ms (moto's CPU floor).",
        "",
    ]
    out += walks.table()
    out.append("")
    if results.ideal_walks:
        out += [
            "The same walk (organization.walk) over a latency-only directory: the same tree,"
            " each page a sleep of the same latency, no HTTP, botocore or moto:",
            "",
        ]
        rows = []
        for run in results.ideal_walks:
            critical = walks.critical(run["workers"])
            rows.append(
                [
                    run["workers"],
                    _s(run["wall"]),
                    run["calls"],
                    _s(critical),
                    f"{run['wall'] / critical:.2f}",
                    _ok(run["wall"] <= 1.5 * critical),
                ]
            )
        out += _table(
            ["Workers", "Wall", "Pages", "Critical path (CP)", "Wall / CP", "Wall <= 1.5 x CP"],
            rows,
        )
        out.append("")
    if results.throttled:
        out += [
            f"Under an emulated rate limit (TooManyRequestsException beyond"
            f" {results.throttled[0]['rate']:g} calls/s), walk of the large OU:",
            "",
        ]
        out += _table(
            ["Workers", "Wall", "Calls (incl. refused)", "Refused", "Outcome"],
            [
                [r["workers"], _s(r["wall"]), r["calls"], r["throttled"], r["error"] or "ok"]
                for r in results.throttled
            ],
        )
        out.append("")

    # 3. Keys
    out += [
        f"## 3. Create through the handler: 1 key vs {s['keys']} keys",
        "",
        f"Accounts mode; VERIFY_DELAY_SECONDS = {s['verify_delay']:g} (the template deploys 1);"
        f" every call {s['latency_ms']:g} ms; key writes on {s['key_workers']} workers; median"
        f" of {s['repeats']} Creates, each on fresh keys.",
        "",
    ]
    rows = []
    for target in results.key_units:
        runs = [k for k in results.keys if k["unit"] == target["unit"]]
        one = next((k for k in runs if k["keys"] == 1), None)
        for run in runs:
            ratio = run["wall"] / one["wall"] if one else float("nan")
            key_ratio = run["key_phase"] / one["key_phase"] if one else float("nan")
            rows.append(
                [
                    f"{target['label']} ({target['accounts']} accounts,"
                    f" {target['lookup_calls']} lookup calls)",
                    run["keys"],
                    _s(run["wall"]),
                    ", ".join(_s(w) for w in run["walls"]),
                    _s(run["lookup"]),
                    _s(run["key_phase"]),
                    f"{ratio:.2f}",
                    f"{key_ratio:.2f}",
                    _ok(ratio <= 2.0),
                ]
            )
    out += _table(
        [
            "Granting",
            "Keys",
            "Median wall",
            "Runs",
            "Organizations span",
            "KMS span",
            "Wall / 1 key",
            "KMS span / 1 key",
            "Target <= 2x",
        ],
        rows,
    )
    out.append("")

    # 4. Cold start and size
    build = results.build
    rows = [
        [
            f"Import of app: {i['label']}",
            (
                f"{_s(i['median'])} (median of {len(i['runs'])}; whole process"
                f" {_s(i['process_median'])}; most time in: "
                + ", ".join(f"{name} {_s(sec)}" for name, sec in i["slowest"][:4])
                + ")"
            )
            if not i["error"]
            else f"failed: {i['error']}",
        ]
        for i in results.imports
    ]
    if build.get("error"):
        rows.append(["sam build", build["error"]])
    else:
        rows += [
            ["sam build (python3.13, arm64 layer)", _s(build["seconds"])],
            [
                "Layer, unzipped",
                f"{_mb(build['layer_bytes'])} in {build['layer_files']} files (largest: "
                + ", ".join(f"{n} {_mb(b)}" for n, b in build["largest_packages"][:3])
                + ")",
            ],
            ["Layer, zipped (deflate)", _mb(build["layer_zip_bytes"])],
            [
                "Function package, unzipped / zipped",
                f"{build['function_bytes'] / 1000:.0f} kB / "
                f"{build['function_zip_bytes'] / 1000:.0f} kB",
            ],
        ]
    out += ["## 4. Cold start and package size", ""]
    out += _table(["Figure", "Value"], rows)
    out.append("")

    capacity = results.capacity
    out += [
        "## 5. Accounts one key policy holds (Accounts mode, beside the default statement)",
        "",
        *_table(
            ["Statements", "Accounts"],
            [
                ["Use (AllowGrants false)", capacity["accounts_mode"]],
                ["Use + Grants (AllowGrants true)", capacity["accounts_mode_with_grants"]],
            ],
        ),
        "",
    ]

    # Summary
    default = s["default_workers"]
    default_walk = walks._find(default, walks.latency)
    summary = [
        [
            "Calls <= lower bound + 1 per named OU, no unit listed twice",
            f"{sum(r['met'] for r in results.lookups)}/{len(results.lookups)} cases",
            _ok(all(r["met"] for r in results.lookups)),
        ]
    ]
    if default_walk:
        critical = walks.critical(default)
        summary.append(
            [
                f"Walk wall <= 1.5 x CP ({default} workers)",
                f"{_s(default_walk['wall'])} vs CP {_s(critical)}"
                f" ({default_walk['wall'] / critical:.2f}x)",
                _ok(default_walk["wall"] <= 1.5 * critical),
            ]
        )
    ideal = next((r for r in results.ideal_walks if r["workers"] == default), None)
    if ideal:
        critical = walks.critical(default)
        summary.append(
            [
                f"Same, walk alone over a latency-only directory ({default} workers)",
                f"{_s(ideal['wall'])} vs CP {_s(critical)} ({ideal['wall'] / critical:.2f}x)",
                _ok(ideal["wall"] <= 1.5 * critical),
            ]
        )
    for target in results.key_units:
        runs = [k for k in results.keys if k["unit"] == target["unit"]]
        one = next((k for k in runs if k["keys"] == 1), None)
        many = next((k for k in runs if k["keys"] != 1), None)
        if one and many:
            ratio = many["wall"] / one["wall"]
            summary.append(
                [
                    f"{many['keys']} keys <= 2 x 1 key, {target['label']}",
                    f"{_s(many['wall'])} vs {_s(one['wall'])} ({ratio:.2f}x)",
                    _ok(ratio <= 2.0),
                ]
            )
    out += ["## Targets", "", *_table(["Target", "Measured", "Status"], summary)]
    return "\n".join(out)
