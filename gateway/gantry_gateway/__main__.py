"""``python -m gantry_gateway``."""

from gantry_gateway.main import main

if __name__ == "__main__":
    main()
