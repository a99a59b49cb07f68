import sys

from frontalab.cli import main

sys.exit(main())
