"""tfadaqat.oqat.search: budgets are never exceeded, and the search finds the optimum of a
small space that brute force can check."""

import json
import re

import pytest

from tests.conftest import all_configs
from tfadaqat.oqat import (SearchSpace, SubnetConfig, SupernetSpec, evolutionary_search,
                           subnet_cost)

SMALL = SearchSpace(kernel_sizes=(3, 5, 7), expand_ratios=(3, 6), depths=(1, 2), stages=2)
SPEC = SupernetSpec(input_shape=(8, 8, 3), stem_channels=8, stage_channels=(8, 16),
                    stage_strides=(1, 2))


def _score(config):
    """A stand-in for accuracy: grows with capacity, more with kernels than with width."""
    return sum(2.0 * kernel + expand for _, _, kernel, expand in config.blocks())


def _bitops(config):
    return subnet_cost(config, SPEC, weight_bits=3, activation_bits=3)["bitops"]


@pytest.mark.parametrize("fraction", [0.3, 0.6])
def test_search_finds_the_brute_force_optimum_within_budget(fraction):
    configs = list(all_configs(SMALL))
    assert len(configs) == SMALL.size() == 42**2
    budget = min(map(_bitops, configs)) + fraction * (max(map(_bitops, configs))
                                                      - min(map(_bitops, configs)))
    optimum = max(_score(c) for c in configs if _bitops(c) <= budget)
    calls = []
    result = evolutionary_search(SMALL, SPEC, lambda c: calls.append(c) or _score(c),
                                 bitops_budget=budget, weight_bits=3, activation_bits=3,
                                 population=30, generations=15, parents=8, seed=0)
    assert all(c.cost["bitops"] <= budget for c in result.candidates)
    assert result.best.score == optimum
    assert len(calls) == len(set(calls)) == len(result.candidates)  # each config scored once
    assert len(calls) < len(configs)  # and not by enumerating the space


def test_pareto_front_is_monotone_and_undominated():
    budget = max(map(_bitops, all_configs(SMALL)))
    result = evolutionary_search(SMALL, SPEC, _score, bitops_budget=budget, weight_bits=3,
                                 activation_bits=3, population=20, generations=4, seed=1)
    front = result.pareto_front()
    assert [c.cost["bitops"] for c in front] == sorted(c.cost["bitops"] for c in front)
    assert [c.score for c in front] == sorted(c.score for c in front)
    for candidate in result.candidates:
        dominating = [f for f in front if f.cost["bitops"] <= candidate.cost["bitops"]]
        assert dominating and max(f.score for f in dominating) >= candidate.score
    saved = json.loads(result.to_json())
    assert saved["best"]["score"] == result.best.score
    assert len(saved["pareto_front"]) == len(front)


def test_weight_memory_budget_is_honoured_too():
    configs = list(all_configs(SMALL))
    kb = [subnet_cost(c, SPEC, weight_bits=3, activation_bits=3)["weight_kb"] for c in configs]
    limit = sorted(kb)[len(kb) // 3]
    result = evolutionary_search(SMALL, SPEC, _score, bitops_budget=float("inf"),
                                 weight_kb_budget=limit, weight_bits=3, activation_bits=3,
                                 population=20, generations=5)
    assert all(c.cost["weight_kb"] <= limit for c in result.candidates)


def test_an_impossible_budget_names_the_least_cost():
    least = _bitops(SMALL.smallest())
    message = re.escape(f"below the smallest sub-network's cost (bitops={least:,.6g},")
    with pytest.raises(ValueError, match=message):
        evolutionary_search(SMALL, SPEC, _score, bitops_budget=least - 1, weight_bits=3,
                            activation_bits=3)
    with pytest.raises(ValueError, match="parents \\(30\\) must not exceed population"):
        evolutionary_search(SMALL, SPEC, _score, bitops_budget=least, weight_bits=3,
                            activation_bits=3, population=10, parents=30)
