"""`python -m facility` is the `facility` command, assembled by the composition root.

The one import of `app` from the core (an entry point, not library code; allowed by name
in the import-linter contracts)."""

import sys

from app.cli import main

sys.exit(main())
