"""`make fuzz`: each target of tests/fuzz/targets.py under atheris for FUZZ_SECONDS, crashes saved as reproducers.

    python -m tests.fuzz.run [--seconds N] [TARGET ...]    every target (or those named), one process each
    python -m tests.fuzz.run --one TARGET --seconds N      one target in this process (what the above runs)

A crash (an error the target does not expect, a failed check, an input slower than --timeout) is
written to tests/data/fuzz/<target>/crash-<sha1> (or timeout-, oom-); commit it with the fix:
tests/unit/test_fuzz_targets.py replays every such file in `make test`. The growing corpus is kept
in .fuzz/<target>/ (not committed) so the next run starts where this one stopped.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / ".fuzz"


def _fuzz_one(name: str, seconds: int, timeout: int) -> None:
    import atheris  # only `make fuzz` needs it (the `fuzz` extra)

    # Imported here, under instrumentation, for coverage feedback: schooldns and the parsers it calls.
    with atheris.instrument_imports(include=["resolver", "yaml", "idna", "json"]):
        from tests.fuzz import targets
    target = targets.TARGETS[name]
    corpus = CORPUS / name
    corpus.mkdir(parents=True, exist_ok=True)
    for number, seed in enumerate(target.seeds()):
        (corpus / f"seed-{number}").write_bytes(seed)
    artifacts = targets.REPRODUCERS / name
    artifacts.mkdir(parents=True, exist_ok=True)
    args = [
        sys.argv[0],
        str(corpus),
        f"-max_total_time={seconds}",
        f"-timeout={timeout}",
        "-rss_limit_mb=1024",
        "-max_len=4096",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
    ]
    atheris.Setup(args, target.check)
    atheris.Fuzz()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="TARGET", help="targets (default: all)")
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "60")))
    parser.add_argument("--timeout", type=int, default=5, help="seconds one input may take before it counts as a crash")
    parser.add_argument("--one", metavar="TARGET", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.one:
        _fuzz_one(options.one, options.seconds, options.timeout)
        return 0
    from tests.fuzz import targets

    unknown = sorted(set(options.names) - set(targets.TARGETS))
    if unknown:
        parser.error(f"no fuzz target {', '.join(unknown)}; the targets: {', '.join(targets.TARGETS)}")
    failed = []
    for name in options.names or targets.TARGETS:
        before = set(targets.reproducers(name))
        print(f"== {name}: {options.seconds} s", flush=True)
        command = [sys.executable, "-m", "tests.fuzz.run", "--one", name, f"--seconds={options.seconds}"]
        result = subprocess.run([*command, f"--timeout={options.timeout}"], cwd=ROOT, check=False)
        new = sorted(set(targets.reproducers(name)) - before)
        if result.returncode or new:
            failed.append(name)
            for path in new:
                print(f"{name}: reproducer {path.relative_to(ROOT)}", flush=True)
    if failed:
        print(f"fuzz: crashes in {', '.join(failed)}; fix them and commit the reproducers", file=sys.stderr)
        return 1
    print("fuzz: no crash", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
