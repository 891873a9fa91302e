import sys

from .cli.main import main

if __name__ == "__main__":  # not when a worker process (monitor's opening.py) imports this module again
    sys.exit(main())
