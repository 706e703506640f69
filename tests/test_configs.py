"""tfadaqat.configs: the QuantizeConfig round-trips and each method's quantizers."""

import pytest

from tfadaqat import configs, quantizers
from tfadaqat._compat import keras
from tfadaqat.quantize import quantize_scope


def test_layer_quantize_config_round_trip():
    config = configs.LayerQuantizeConfig(
        ("kernel",), quantizers.DQQuantizer(bits=5, parametrization="U1"),
        quantizers.PACTActivationQuantizer(bits=3, signed=True))
    assert configs.LayerQuantizeConfig.from_config(config.get_config()) == config
    with quantize_scope():
        restored = keras.utils.deserialize_keras_object(
            keras.utils.serialize_keras_object(config))
    assert restored == config
    output_only = configs.LayerQuantizeConfig((), None, quantizers.LSQQuantizer(4, False))
    assert output_only.get_config()["weight_quantizer"] is None
    assert configs.LayerQuantizeConfig.from_config(output_only.get_config()) == output_only


def test_each_weight_gets_its_own_quantizer():
    config = configs.LayerQuantizeConfig(("kernel",), quantizers.LSQQuantizer(4))
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    (_, first), = config.get_weights_and_quantizers(layer)
    (_, second), = config.get_weights_and_quantizers(layer)
    assert first == second and first is not second


def test_weights_without_quantizer_is_an_error():
    with pytest.raises(ValueError, match="weight_attributes were given without"):
        configs.LayerQuantizeConfig(("kernel",), None, None)


@pytest.mark.parametrize("method, kind, expected", [
    ("adaqat", "weight", quantizers.DoReFaWeightQuantizer),
    ("adaqat", "activation", quantizers.PACTActivationQuantizer),
    ("dq", "weight", quantizers.DQQuantizer),
    ("dq", "activation", quantizers.DQQuantizer),
    ("lsq", "weight", quantizers.LSQQuantizer),
    ("lsq", "activation", quantizers.LSQQuantizer),
])
def test_make_quantizer(method, kind, expected):
    quantizer = configs.make_quantizer(method, kind, signed=kind == "weight", bits=4, min_bits=2,
                                       max_bits=8)
    assert type(quantizer) is expected
    assert quantizer.signed == (kind == "weight")


def test_make_quantizer_passes_options_and_rejects_unknown():
    quantizer = configs.make_quantizer("dq", "weight", signed=True, bits=4, min_bits=2,
                                       max_bits=8, options={"parametrization": "U2"})
    assert quantizer.parametrization == "U2"
    with pytest.raises(ValueError, match=r"method must be one of \('adaqat', 'dq', 'lsq'\)"):
        configs.make_quantizer("pact", "weight", signed=True, bits=4, min_bits=2, max_bits=8)
    with pytest.raises(ValueError, match="kind must be one of"):
        configs.make_quantizer("dq", "bias", signed=True, bits=4, min_bits=2, max_bits=8)
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['power_of_two'\]"):
        configs.validate_options("adaqat", {"power_of_two": True})
