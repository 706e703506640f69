"""``python -m tfadaqat.export``: the same command as ``tfadaqat export``.

Python imports the ``tfadaqat`` package, and with it TensorFlow, before this module runs, so
TensorFlow's start-up lines print first here. ``tfadaqat export`` (or ``python -m
tfadaqat_cli export``) silences them before TensorFlow loads; prefer it.
"""

from tfadaqat.export.cli import main

raise SystemExit(main())
