"""Write validation/error-bands.yaml: the signed error of every shipped published run, by framework and kind of
model (dense, MoE), from a
``parplan validate`` run with today's model. ``plan`` and ``estimate`` draw each prediction's interval from it.

    python scripts/error_bands.py            # rewrite the file (about half a minute)
    python scripts/error_bands.py --check    # exit 1 if the file differs from what validate gives now

Run it after any change to the predictions; ``tests/validate/test_validation.py`` fails until the file agrees.
"""
from __future__ import annotations

import argparse
import os
import sys

import yaml

sys.path.insert(0, os.getcwd())
from parplan.plan.interval import BANDS_FILE  # noqa: E402
from parplan.specs.registry import spec_dir  # noqa: E402
from parplan.validate.bands import error_bands  # noqa: E402
from parplan.validate.published import load_runs, validate_runs  # noqa: E402
from parplan.views.files import write_text  # noqa: E402

HEADER = """\
# The signed error (predicted / published - 1) of every published run that `parplan validate` predicts (but those
# a record leaves out, with its reason), by the framework that ran it and the kind of model (dense or moe): the
# validation part of every prediction's interval (parplan/plan/interval.py).
# Written by scripts/error_bands.py from today's model; do not edit by hand. tests/validate/test_validation.py
# fails when it no longer matches what `parplan validate` gives.
"""


def render(data: dict) -> str:
    return HEADER + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the file instead of writing it")
    args = ap.parse_args(argv)
    runs = load_runs()
    results = validate_runs(runs)
    if results["skipped"]:
        print(f"{len(results['skipped'])} runs could not be predicted (first: {results['skipped'][0]}); "
              f"fix them before writing the bands", file=sys.stderr)
        return 1
    text = render(error_bands(results, runs))
    path = spec_dir("validation") / BANDS_FILE
    if args.check:
        same = path.is_file() and path.read_text() == text
        print(f"{path}: {'up to date' if same else 'differs from parplan validate: run scripts/error_bands.py'}")
        return 0 if same else 1
    write_text(path, text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
