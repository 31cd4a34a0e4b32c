"""``python -m onhand`` is the ``onhand`` command."""

from onhand.cli import main

main()
