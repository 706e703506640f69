"""``python -m tfadaqat.export``: the same command as ``tfadaqat export``."""

from tfadaqat.export.cli import main

raise SystemExit(main())
