"""tfadaqat.oqat.space: configs, validation, sampling, mutation and crossover."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tests.conftest import all_configs
from tfadaqat.oqat import SearchSpace, SubnetConfig

SPACE = SearchSpace()


def test_largest_and_smallest_and_the_size_of_the_space():
    largest, smallest = SPACE.largest(), SPACE.smallest()
    assert largest.depths == (4,) * 5 and smallest.depths == (2,) * 5
    assert set(k for _, _, k, _ in largest.blocks()) == {7}
    assert set(e for _, _, _, e in smallest.blocks()) == {3}
    assert sum(1 for _ in largest.blocks()) == 20
    # 9 choices per block; a stage of depth d has 9^d; 5 independent stages.
    assert SPACE.size() == (9**2 + 9**3 + 9**4) ** 5


def test_size_counts_every_config_of_a_small_space():
    space = SearchSpace(kernel_sizes=(3, 5), expand_ratios=(3,), depths=(1, 2), stages=2)
    configs = list(all_configs(space))
    assert len(configs) == len(set(configs)) == space.size() == 36
    for config in configs:
        assert space.validate(config) is config


@pytest.mark.parametrize("config, message", [
    (SubnetConfig((4, 4, 4, 4, 5), ((7,) * 4,) * 4 + ((7,) * 5,), ((6,) * 4,) * 4 + ((6,) * 5,)),
     r"config.depths\[4\]=5 is outside the search space; allowed: \(2, 3, 4\)"),
    (SubnetConfig((2,) * 5, ((3, 9),) + ((3, 3),) * 4, ((3, 3),) * 5),
     r"config.kernel_sizes\[0\]\[1\]=9 is outside the search space; allowed: \(3, 5, 7\)"),
    (SubnetConfig((2,) * 5, ((3, 3),) * 5, ((3, 3),) * 4 + ((3, 8),)),
     r"config.expand_ratios\[4\]\[1\]=8 is outside the search space; allowed: \(3, 4, 6\)"),
    (SubnetConfig((2,) * 5, ((3, 3, 3),) + ((3, 3),) * 4, ((3, 3),) * 5),
     r"config.kernel_sizes\[0\] must have 2 entries"),
    (SubnetConfig((2,) * 4, ((3, 3),) * 4, ((3, 3),) * 4),
     r"config.depths must have one entry per stage \(5\)"),
])
def test_configs_outside_the_space_are_named(config, message):
    with pytest.raises(ValueError, match=message):
        SPACE.validate(config)


def test_bad_spaces_are_refused():
    with pytest.raises(ValueError, match="kernel_sizes must be odd"):
        SearchSpace(kernel_sizes=(3, 4))
    with pytest.raises(ValueError, match="depths must be a non-empty sequence"):
        SearchSpace(depths=())
    with pytest.raises(ValueError, match="stages must be a positive integer"):
        SearchSpace(stages=0)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_sampled_mutated_and_crossed_configs_stay_in_the_space(seed):
    rng = np.random.default_rng(seed)
    first, second = SPACE.sample(rng), SPACE.sample(rng)
    for config in (first, second, SPACE.mutate(first, rng, 0.5),
                   SPACE.crossover(first, second, rng)):
        SPACE.validate(config)
    child = SPACE.crossover(first, second, rng)
    for stage in range(5):  # every stage comes whole from one parent
        parts = (child.depths[stage], child.kernel_sizes[stage], child.expand_ratios[stage])
        assert parts in ((first.depths[stage], first.kernel_sizes[stage],
                          first.expand_ratios[stage]),
                         (second.depths[stage], second.kernel_sizes[stage],
                          second.expand_ratios[stage]))


def test_mutation_with_probability_zero_changes_nothing_and_one_changes_a_lot():
    rng = np.random.default_rng(0)
    config = SPACE.sample(rng)
    assert SPACE.mutate(config, rng, 0.0) == config
    changed = [SPACE.mutate(config, rng, 1.0) != config for _ in range(20)]
    assert sum(changed) >= 19


def test_config_dict_round_trip():
    config = SPACE.sample(np.random.default_rng(3))
    assert SubnetConfig.from_dict(config.to_dict()) == config
