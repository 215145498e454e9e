"""Benchmarks of ipcgw: framing, codec and transports against in-run references."""
