import sys

from miniplaces.cli import main

sys.exit(main())
