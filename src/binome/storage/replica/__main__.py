"""`python -m binome.storage.replica`: run the volume engine (normally started by binomed).

The command line stays this one (the supervisor starts the engine with it, and
an operator finds the engine by it in `ps`); the process itself is `engine.main`.
"""

import sys

from binome.storage.replica.engine.main import main

if __name__ == "__main__":
    sys.exit(main())
