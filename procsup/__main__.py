"""``python -m procsup``: the same as the ``procsup`` command."""

import sys

from procsup._cli import main

if __name__ == "__main__":
    sys.exit(main())
