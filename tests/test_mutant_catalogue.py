"""The mutant suite's catalogue (tests/mutants/mutants.py) against today's source, without
running it: each edit still applies exactly once, and names tests that exist.  A kernel change
that moves an entry's text would otherwise surface only at the next ./scripts/mutants run."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "mutants"))
try:
    from mutants import MUTANTS
finally:
    sys.path.remove(str(ROOT / "tests" / "mutants"))


def test_every_mutant_applies_once_to_todays_source():
    moved = {m.name: (ROOT / m.file).read_text().count(m.old) for m in MUTANTS}
    assert {name: n for name, n in moved.items() if n != 1} == {}


def test_every_mutant_names_existing_tests_and_changes_its_text():
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)
    for m in MUTANTS:
        assert m.old != m.new and m.tests, m.name
        for node in m.tests:
            path, _, name = node.partition("::")
            test_file = ROOT / path
            assert test_file.exists(), (m.name, node)
            if name:
                assert f"def {name.split('[')[0]}(" in test_file.read_text(), (m.name, node)
