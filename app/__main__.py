"""`python -m app` is the `facility` command."""

import sys

from app.cli import main

sys.exit(main())
