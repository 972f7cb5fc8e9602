"""`python -m embedlib.cli`."""

import sys

from embedlib.cli.commands import main

sys.exit(main())
