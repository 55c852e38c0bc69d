import sys

from backends.cli import main

sys.exit(main())
