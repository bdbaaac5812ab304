import sys

from . import main

if __name__ == "__main__":  # `python -m bench.cli`
    sys.exit(main())
