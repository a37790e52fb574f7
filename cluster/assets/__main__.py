"""`python -m cluster.assets [--only NAME ...] [--root DIR] [--check]`: prepare (or check) the assets.

Exits 1 when a step failed. A `missing-prereq` step (Debian packages this process may not fetch) is a
warning, printed with the command that fixes it, and does not change the exit status: the other assets
are still usable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cluster.assets.checks import check_assets
from cluster.assets.prepare import prepare_assets
from cluster.assets.steps import STEP_NAMES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.assets", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None,
                        help="asset cache root (default: $RAYLM_HOME or ~/.cache/raylm)")
    parser.add_argument("--only", action="append", default=[], choices=STEP_NAMES,
                        help="prepare only this asset (repeatable)")
    parser.add_argument("--check", action="store_true", help="only check the prepared assets")
    args = parser.parse_args(argv)

    if args.check:
        rows = {k: v for k, v in check_assets(args.root).items() if not args.only or k in args.only}
        for name, (ok, detail) in rows.items():
            print(f"{'ok' if ok else 'FAIL':<5} {name:<16} {detail}")
        return 0 if all(ok for ok, _ in rows.values()) else 1

    results = prepare_assets(args.root, set(args.only) or None)
    print("\nsummary:")
    for r in results:
        print(("WARNING " if r.status == "missing-prereq" else "") + r.line())
    missing = [r for r in results if r.status == "missing-prereq"]
    if missing:
        print(f"\n{len(missing)} step(s) skipped for missing prerequisites; the others are ready.",
              file=sys.stderr)
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
