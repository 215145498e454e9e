"""ipcgw's client side inside NS-3 simulations (PyPI ``ns3`` bindings)."""
