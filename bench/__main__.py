"""``python -m bench``: the same command as ``ipcgw bench``."""

from bench.cli import main

main()
