from ipcgw.cli import main

main()
