import sys

from callspan.cli import main

sys.exit(main())
