"""The seed's evaluation as one command: ``ipcgw experiment run CONFIG.toml``.

A TOML file names a matrix — path setups (the NS-3 data plane or the veth
testbed) x path-manager policies x the IPC transport the simulation reports
through x workloads (file transfers, an unmodified program under
``mptcpize``, a video-like stream) x repetitions — and the runner executes
each cell in fresh namespaces, appending one JSON line per cell to
``results.jsonl`` so an interrupted matrix resumes where it stopped. The
report (markdown, CSV, plots) is built from that file alone.

Modules: :mod:`config` (TOML → cells), :mod:`agent` (the processes run inside
the namespaces), :mod:`setups` (veth / ns-3 paths, loss counters, emulated
mobility), :mod:`control` (gateway, policy instrumentation, reaction time),
:mod:`runner` (the matrix), :mod:`stats` and :mod:`video` (pure scoring),
:mod:`report` (report.md, results.csv, plots, compare), :mod:`cli`.
"""
