"""tfadaqat._compat: importing tfadaqat switches TensorFlow to legacy Keras (tf-keras)."""

import os
import subprocess
import sys


def test_import_switches_tf_keras_to_legacy_keras():
    # A fresh interpreter: tfadaqat first, then TensorFlow, as a user writes it.
    program = ("import tfadaqat, tensorflow as tf, tf_keras; "
               "print(tf.keras.layers.Dense is tf_keras.layers.Dense, "
               "tf.keras.Model is tf_keras.Model)")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"], result.stdout
    # Without tfadaqat, this TensorFlow gives Keras 3 (installed beside it): the switch is
    # tfadaqat's doing, not the environment's.
    environment = {key: value for key, value in os.environ.items()
                   if key != "TF_USE_LEGACY_KERAS"}
    plain = subprocess.run([sys.executable, "-c", "import tensorflow as tf, tf_keras; "
                            "print(tf.keras.layers.Dense is tf_keras.layers.Dense)"],
                           capture_output=True, text=True, timeout=300, env=environment)
    assert plain.stdout.split() != ["True"], plain.stdout
