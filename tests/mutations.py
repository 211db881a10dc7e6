"""One-line mutations of the rules whose breach would be silent; the tests named for each must
fail on it.

    python tests/mutations.py            # every mutant
    python tests/mutations.py NAME ...   # some

The tracked files are copied once to a temporary directory; each mutant changes one line there,
runs only its named tests against the copy (imports resolve to the copy), and puts the line
back. First the named tests run on the unchanged copy and must pass, so a mutant cannot count
as caught by a test that fails anyway. A mutant's line is found by its exact text, which must
occur exactly once in its file: a line that moved or changed stops the check with an error
naming it (update MUTANTS), rather than letting it silently check nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    line: str  # the whole line, exactly as it stands
    becomes: str
    tests: tuple[str, ...]


AUTH_TESTS = (
    "tests/unit/test_auth.py::test_a_tenant_is_matched_exactly_never_by_prefix_case_or_look_alike",
)
PEER_TESTS = ("tests/unit/test_peer_validation.py",)
MINIMUM_TESTS = (
    "tests/unit/test_resolution.py::test_a_belief_below_the_minimum_confidence_is_uncertain",
    "tests/unit/test_resolution.py::"
    "test_an_observation_below_the_minimum_never_outweighs_one_above_it",
    "tests/unit/test_resolution.py::"
    "test_a_belief_whose_weighted_support_falls_below_the_minimum_is_uncertain",
    "tests/unit/test_resolution.py::"
    "test_an_observation_below_the_minimum_is_flagged_in_the_explanation",
)
FORGET_TESTS = (
    "tests/unit/test_crdt_laws.py::test_a_forget_always_erases_a_write_that_happened_before_it",
    "tests/unit/test_crdt_laws.py::test_concurrent_forgets_compose_and_the_later_bound_wins",
)

MUTANTS = (
    Mutant(
        "tenant matched by prefix",
        "node/auth.py",
        "        if self.tenant is not None and self.tenant != tenant:",
        "        if self.tenant is not None and not tenant.startswith(self.tenant):",
        AUTH_TESTS,
    ),
    Mutant(
        "tenant matched without case",
        "node/auth.py",
        "        if self.tenant is not None and self.tenant != tenant:",
        "        if self.tenant is not None and self.tenant.lower() != tenant.lower():",
        AUTH_TESTS,
    ),
    Mutant(
        "peer confidence unchecked",
        "node/validation.py",
        '        unit_interval(o.confidence, f"{at}.confidence")',
        "        pass",
        PEER_TESTS,
    ),
    Mutant(
        "peer dots outside the causal context accepted",
        "node/validation.py",
        "        if o.dot.counter > known.get(o.dot.actor, 0) and (o.dot.actor, o.dot.counter)"
        " not in cloud:",
        "        if False:",
        PEER_TESTS,
    ),
    Mutant(
        "peer erase bound unbounded",
        "node/validation.py",
        '        hlc(msg.erased.hlc, f"{field}.erased.hlc")',
        "        pass",
        PEER_TESTS,
    ),
    Mutant(
        "minimum confidence ignored for the belief",
        "node/resolution.py",
        "    uncertain = confidence < policy.min_confidence",
        "    uncertain = False",
        MINIMUM_TESTS,
    ),
    Mutant(
        "minimum confidence ignored for observations",
        "node/resolution.py",
        "        below_minimum=weight < policy.min_confidence,",
        "        below_minimum=False,",
        MINIMUM_TESTS,
    ),
    Mutant(
        "forget bound: the older erase wins",
        "sync/crdt.py",
        "        return EraseBound(max(self.hlc, other.hlc), self.seen.join(other.seen))",
        "        return EraseBound(min(self.hlc, other.hlc), self.seen.join(other.seen))",
        FORGET_TESTS,
    ),
    Mutant(
        "a page token of another tenant's listing accepted",
        "node/listing.py",
        '        if value.get("listing") != listing:',
        "        if False:",
        (
            "tests/unit/test_listing.py::"
            "test_a_token_is_refused_for_another_tenant_or_kind_and_garbage_is_refused",
        ),
    ),
)


class MutationError(Exception):
    """The check cannot run as written (a line moved, the named tests fail unmutated)."""


def locate(text: str, mutant: Mutant) -> int:
    """The index of the mutant's line in ``text``'s lines; exactly one must match."""
    lines = text.split("\n")
    found = [i for i, line in enumerate(lines) if line == mutant.line]
    if len(found) != 1:
        raise MutationError(
            f"{mutant.name}: {mutant.path} holds the line {mutant.line!r} {len(found)} times, "
            "not once: it moved or changed; update MUTANTS in tests/mutations.py"
        )
    return found[0]


def check_lines(root: Path = ROOT, mutants: Sequence[Mutant] = MUTANTS) -> None:
    for mutant in mutants:
        locate((root / mutant.path).read_text(), mutant)


def copy_tree(dest: Path) -> None:
    """The tracked files of the checkout, as they are on disk (with uncommitted edits)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def environment(dest: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(dest), str(dest / "protos")])
    return env


def run_tests(dest: Path, tests: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
        cwd=dest, env=environment(dest), capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip


def imports_from(dest: Path) -> None:
    """The copy's modules are the ones imported there, not the installed checkout's."""
    paths = subprocess.run(
        [sys.executable, "-c",
         "import node.auth, sync.crdt; print(node.auth.__file__); print(sync.crdt.__file__)"],
        cwd=dest, env=environment(dest), capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()  # fmt: skip
    for path in paths:
        if not Path(path).resolve().is_relative_to(dest.resolve()):
            raise MutationError(f"the copy imports {path}, not its own modules")


def check(mutants: Sequence[Mutant] = MUTANTS) -> list[tuple[Mutant, str]]:
    """Each mutant and its outcome, "caught" or "SURVIVED"; MutationError when it cannot run."""
    check_lines(ROOT, mutants)
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="selfmodel-mutants-") as tmp:
        dest = Path(tmp)
        copy_tree(dest)
        imports_from(dest)
        named = sorted({t for m in mutants for t in m.tests})
        baseline = run_tests(dest, named)
        if baseline.returncode != 0:
            raise MutationError("the named tests fail without a mutation:\n" + baseline.stdout)
        for mutant in mutants:
            path = dest / mutant.path
            original = path.read_text()
            lines = original.split("\n")
            lines[locate(original, mutant)] = mutant.becomes
            path.write_text("\n".join(lines))
            started = time.monotonic()
            try:
                done = run_tests(dest, mutant.tests)
            finally:
                path.write_text(original)
            if done.returncode not in (0, 1):  # 1: tests failed; else they did not run
                raise MutationError(
                    f"{mutant.name}: pytest exited {done.returncode}\n{done.stdout}"
                )
            outcome = "caught" if done.returncode == 1 else "SURVIVED"
            print(f"{outcome:8} {mutant.name} ({time.monotonic() - started:.1f}s)", flush=True)
            outcomes.append((mutant, outcome))
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: every one)")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    unknown = set(args.names) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"no mutants named {sorted(unknown)}")
    try:
        outcomes = check(chosen)
    except MutationError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    survivors = [m.name for m, outcome in outcomes if outcome != "caught"]
    print(f"{len(outcomes) - len(survivors)} caught, {len(survivors)} survived")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
