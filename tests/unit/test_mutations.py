"""Every planted bug of tests/mutations.py is caught by the fast CPU tests (one pytest run
on a mutated copy of the tree per mutant, ~20 s each)."""

from __future__ import annotations

import pytest

from tests.mutations import MUTANTS, Mutant, run


def test_unmutated_tree_passes_the_fast_tests() -> None:
    """Without it a mutant 'caught' could be a tree whose tests fail anyway."""
    outcome = run(None)
    assert not outcome.failures and " passed" in outcome.summary, outcome.summary


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name.split(" (")[0].replace(" ", "-") + f"-{i}" for i, m in enumerate(MUTANTS)])
def test_mutant_is_caught(mutant: Mutant) -> None:
    outcome = run(mutant)
    assert outcome.caught, f"{mutant.name}: no fast test failed ({outcome.summary})"
    print(f"{mutant.name}: caught by " + "; ".join(line[:160] for line in outcome.failures))
