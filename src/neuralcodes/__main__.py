"""`python -m neuralcodes` is the `neuralcodes` command."""

import sys

from neuralcodes.cli import main

sys.exit(main())
