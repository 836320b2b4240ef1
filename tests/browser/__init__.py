"""Browser tests (Chromium via Playwright).

A package so that this folder's conftest gets its own module name (``browser.conftest``) and
does not replace ``tests/conftest.py`` as ``conftest`` for the tests that import from it. The
folder also goes on ``sys.path`` so its helpers import as ``browser_support`` and ``standalone``.
"""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.append(_HERE)
