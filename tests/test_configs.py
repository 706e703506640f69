"""tfadaqat.configs: the QuantizeConfig round-trips."""

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
