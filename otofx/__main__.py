import sys

from otofx.cli import main

sys.exit(main())
