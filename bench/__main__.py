"""``python -m ipcgw_bench``: the same command as ``ipcgw bench``."""

from .cli import main

main()
