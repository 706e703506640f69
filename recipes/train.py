"""Trains, quantizes with learned bit-widths, summarises and exports, all into --workdir.

  python -m recipes.train --config=recipes/configs/digits_adaqat.py --workdir=runs/digits
  python -m recipes.train --config=recipes/configs/resnet20_cifar10_dq.py --workdir=runs/r20_dq \\
      --config.budget.bitops=0.125 --config.epochs=30 --init_from=runs/float/float_model.keras

Any config field can be overridden with ``--config.<field>=value`` (see
``recipes/configs/base.py``). Starting the same command again resumes the run from its last
checkpoint. The work itself is :func:`recipes.training.train_and_evaluate`.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from recipes import data, training

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a recipe config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs, summary and the .tflite.")
flags.DEFINE_string("init_from", None, "A float .keras model of the same architecture to "
                    "quantize (sets config.init_from; default: the config's).")
flags.DEFINE_enum("strategy", "default", list(training.STRATEGIES), "tf.distribute strategy.")
flags.DEFINE_integer("cpu_devices", 0, "Split the CPU into this many logical devices (to try "
                     "--strategy=mirrored on one machine); 0 leaves it whole.", lower_bound=0)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # TensorFlow logs every checkpoint it writes
    config = FLAGS.config
    if FLAGS.cpu_devices:
        from tfadaqat._compat import tf
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration()] * FLAGS.cpu_devices)
    if FLAGS.init_from is not None:
        with config.unlocked():
            config.init_from = FLAGS.init_from
    try:
        training.train_and_evaluate(config, FLAGS.workdir, strategy=FLAGS.strategy)
    except (ValueError, data.DatasetNotPreparedError) as error:
        raise app.UsageError(str(error)) from None


if __name__ == "__main__":
    app.run(main)
