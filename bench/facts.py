"""The facts of a GPU run, written before anything is measured.

    python bench/facts.py OUT.json

Prints the environment (torch, CUDA, device, Triton, pytest and matplotlib) and writes
run_facts() with the date (UTC) to OUT.json, which bench/summarize.py reads, so a run whose
benchmarks never finish still says where it ran.  Exits 2 when Triton or pytest is missing
(every step needs them); pytest-benchmark is checked by the steps that use it.
"""

from __future__ import annotations

import datetime
import importlib
import json
import sys

import torch


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device:",
          torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
    missing = []
    for name in ("triton", "pytest", "matplotlib"):
        try:
            print(f"{name} {importlib.import_module(name).__version__}")
        except ImportError:
            if name == "matplotlib":
                print("matplotlib missing: the summary will have no plot")
            else:
                missing.append(name)
    if missing:
        print(f"facts: not installed: {', '.join(missing)}", file=sys.stderr)
        return 2
    from mnv2_fast.tools.timing import run_facts

    facts = dict(run_facts(), date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    with open(argv[0], "w") as f:
        json.dump(facts, f, indent=1)
    print("facts:", ", ".join(f"{k} {facts[k]}" for k in ("gpu", "driver", "cuda", "torch", "triton", "commit", "date")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
