"""Every planted bug of tests/mutations.py is caught by the fast CPU tests (one pytest run
on a mutated copy of the tree per mutant, ~11 s each, mostly imports)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.mutations import MUTANTS, Mutant, Outcome, run

IDS = [m.name.split(" (")[0].replace(" ", "-") + f"-{i}" for i, m in enumerate(MUTANTS)]


@pytest.fixture(scope="module")
def outcomes() -> dict[str, Outcome]:
    """Every run (the unmutated tree's and each mutant's) at once, one per core: each is its
    own pytest process on its own copy of the tree, and spends its time single-threaded."""
    runs: dict[str, Mutant | None] = {"unmutated": None, **dict(zip(IDS, MUTANTS))}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(runs, pool.map(run, runs.values())))


def test_unmutated_tree_passes_the_fast_tests(outcomes: dict[str, Outcome]) -> None:
    """Without it a mutant 'caught' could be a tree whose tests fail anyway."""
    outcome = outcomes["unmutated"]
    assert not outcome.failures and " passed" in outcome.summary, outcome.summary


@pytest.mark.parametrize("name", IDS)
def test_mutant_is_caught(outcomes: dict[str, Outcome], name: str) -> None:
    outcome = outcomes[name]
    mutant = outcome.mutant
    assert outcome.caught, f"{mutant.name}: no fast test failed ({outcome.summary})"
    print(f"{mutant.name}: caught by " + "; ".join(line[:160] for line in outcome.failures))
