"""The namespace/TAP data-plane lab: real MPTCP in namespaces, paths simulated by ns-3.

A separate product from the in-simulation client one level up (``ns3_side``):
this package builds namespaces and TAP devices (:mod:`.dataplane`), runs the
ns-3 process that carries their traffic (:mod:`.simproc`, paths described in
:mod:`.paths`), drives and samples traffic (:mod:`.traffic`), and runs the
handover experiment (:mod:`.handover`, its reaction chain in :mod:`.chain`).
``ipcgw dataplane`` is :mod:`.cli`. See DATAPLANE.md beside this file.
"""
