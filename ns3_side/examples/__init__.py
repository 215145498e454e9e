"""Runnable ns3_side examples (``python -m ns3_side.examples.<name> --help``)."""
