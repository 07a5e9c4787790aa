import sys

from gantry_runtime.simulator.cli import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
