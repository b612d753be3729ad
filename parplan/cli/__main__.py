"""``python -m parplan.cli ...``: the same as the ``parplan`` command."""
from .commands import main

if __name__ == "__main__":
    main()
