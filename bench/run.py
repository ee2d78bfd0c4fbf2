"""Entry point of ``make bench``: ``.venv/bin/python bench/run.py [options]``, and of
``make bench-resync``: ``.venv/bin/python bench/run.py resync [options]``.

Run as a script, so the repository root and ``handler/`` (where ``app`` and ``orgkeypolicy``
live in the Lambda package) are put on ``sys.path`` before anything is imported from them.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for entry in (str(REPO / "handler"), str(REPO)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

from bench import resync  # noqa: E402
from bench.main import main  # noqa: E402

if __name__ == "__main__":
    if sys.argv[1:2] == ["resync"]:
        raise SystemExit(resync.main(sys.argv[2:]))
    raise SystemExit(main())
