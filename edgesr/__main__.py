from __future__ import annotations

from edgesr.cli import main

raise SystemExit(main())
