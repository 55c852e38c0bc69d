import sys

from loadtest.sim.cli import main

raise SystemExit(main(sys.argv[1:]))
