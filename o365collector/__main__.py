"""``python -m o365collector``: see ``cli``."""

from .cli import main

raise SystemExit(main())
