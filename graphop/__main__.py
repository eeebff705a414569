import sys

from graphop.cli import main

sys.exit(main())
