"""Detection evaluation: the figures README and docs/simulate.md quote.

Runs ``agentiam simulate`` (every scenario, 20 instances each, 3 hours of warm-up
history, the shipped detection defaults and examples/playbooks.yaml) and prints the
markdown table, then the targets of issue 8 that were missed, if any.

    .venv/bin/python bench/detection_eval.py [--instances N] [--seed S] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mdtable import markdown_table

from agentiam.cli.simulate import HEADER, Options, report, rows, run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--scenario", action="append")
    parser.add_argument("--json", action="store_true", help="also print the JSON report")
    args = parser.parse_args()
    common = {
        "seed": args.seed,
        "progress": lambda m: print(m, file=sys.stderr),
    }
    if args.scenario:
        common["scenarios"] = tuple(args.scenario)
    options = Options.quick(**common) if args.quick else Options(instances=args.instances, **common)
    started = time.monotonic()
    runs = run(options)
    data = report(runs, options)
    print(markdown_table(HEADER, rows([r.result for r in runs])))
    print(
        f"\n{options.instances} instances per scenario, seed {options.seed}, "
        f"{options.warmup_hours} h of warm-up history; "
        f"{time.monotonic() - started:.0f} s in all"
    )
    for r in data["scenarios"]:
        print(
            f"- {r['scenario']}: TP by detector {r['true_positive_detectors']}, "
            f"FP by detector {r['false_positive_detectors']}, "
            f"{r['benign_calls_during_attacks']} benign calls during the attacks"
        )
    for line in data["failures"]:
        print(f"target missed: {line}")
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    return 1 if data["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
