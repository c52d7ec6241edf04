"""`python -m wastenet ...` is the same as the `wastenet` command."""

import sys

from wastenet.cli import main

sys.exit(main())
