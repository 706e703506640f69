"""tfadaqat.oqat.architecture: sub-network models, their shapes and their exact cost."""

import numpy as np
import pytest

import tfadaqat
from tfadaqat.oqat import SearchSpace, SupernetSpec, block_shapes, build_subnet, subnet_cost

SPACE = SearchSpace()
SPEC = SupernetSpec(input_shape=(16, 16, 3), num_classes=10, stem_channels=8,
                    stage_channels=(8, 12, 16, 16, 24), stage_strides=(1, 2, 2, 1, 2))


def test_a_subnet_has_the_shapes_of_its_config():
    config = SPACE.sample(np.random.default_rng(0))
    model = build_subnet(config, SPEC)
    assert model.output_shape == (None, 10)
    for block in block_shapes(config, SPEC):
        depthwise = model.get_layer(f"{block.name}_depthwise_conv")
        assert depthwise.depthwise_kernel.shape == (block.kernel_size, block.kernel_size,
                                          block.hidden_channels, 1)
        assert model.get_layer(f"{block.name}_expand_conv").kernel.shape == (
            1, 1, block.input_channels, block.input_channels * block.expand_ratio)
        assert depthwise.output_shape[1:3] == block.output_size
        assert (f"{block.name}_add" in [layer.name for layer in model.layers]) == block.residual
    running = {f"stage{s + 1}_block{b + 1}" for s, b, _, _ in config.blocks()}
    built = {"_".join(layer.name.split("_")[:2]) for layer in model.layers
             if layer.name.startswith("stage")}
    assert built == running  # skipped blocks are absent


def test_strides_and_resolutions_follow_the_spec():
    blocks = list(block_shapes(SPACE.smallest(), SPEC))
    assert [b.output_size for b in blocks if b.block == 0] == [(16, 16), (8, 8), (4, 4),
                                                               (4, 4), (2, 2)]
    assert SupernetSpec.for_input((224, 224, 3), 1000).stem_stride == 2
    assert SupernetSpec.for_input((8, 8, 1), 10).stage_strides == (1, 1, 2, 1, 2)


@pytest.mark.parametrize("seed", [0, 1])
def test_subnet_cost_equals_tfadaqat_cost_on_the_blocks(seed):
    config = SPACE.sample(np.random.default_rng(seed))
    qmodel = tfadaqat.quantize_model(build_subnet(config, SPEC), "lsq", weight_bits=4,
                                     activation_bits=3)
    block_layers = [layer for layer in tfadaqat.cost(qmodel).layers
                    if layer.name.startswith("stage") and layer.macs]
    expected = subnet_cost(config, SPEC, weight_bits=4, activation_bits=3)
    assert sum(layer.macs for layer in block_layers) == expected["macs"]
    assert sum(layer.bitops for layer in block_layers) == expected["bitops"]
    assert sum(layer.weight_kb for layer in block_layers) == pytest.approx(expected["weight_kb"])
    # Golden value for the smallest config, by hand: stage 1, 16x16, 8 -> 24 -> 8 channels,
    # k = 3: 256 (8 x 24) + 256 (9 x 24) + 256 (24 x 8) = 49,152 + 55,296 + 49,152 = 153,600
    # MACs per block; the smallest depth is 2.
    first = next(block_shapes(SPACE.smallest(), SPEC))
    assert (first.input_channels, first.hidden_channels, first.output_channels) == (8, 24, 8)
    one_block = SupernetSpec(input_shape=(16, 16, 3), stem_channels=8,
                             stage_channels=(8,), stage_strides=(1,))
    assert subnet_cost(SearchSpace(stages=1).smallest(), one_block, weight_bits=1,
                       activation_bits=1)["macs"] == 2 * 153_600


def test_bad_specs_and_mismatched_spaces_are_refused():
    with pytest.raises(ValueError, match="strides must be 1 or 2"):
        SupernetSpec(stage_strides=(1, 3, 2, 1, 2))
    with pytest.raises(ValueError, match="one entry per stage"):
        SupernetSpec(stage_strides=(1, 2))
    with pytest.raises(ValueError, match="the search space has 4 stages, the supernet 5"):
        build_subnet(SearchSpace(stages=4).smallest(), SPEC, SearchSpace(stages=4))
