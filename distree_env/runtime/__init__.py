"""The live runtime: the network run across processes, edge conditions emulated, all measured.

One process per device plus an aggregator, over torch.distributed; the scenario's edge
conditions are emulated and every request is measured.

Modules, one job each: ``launch`` (roles, ranks, the local launcher), ``transport`` (messages with
timeouts), ``shaping`` (compute availability, token-bucket links, kernel shaping), ``schedule``
(the simulator's requests, arrivals and resource levels for a seed), ``device`` and
``aggregator`` (the two kinds of process), ``records`` (run records), ``calibration`` (fitting
the simulator's cluster to records). Imports torch (``launch``, ``shaping``, ``schedule``,
``records`` and ``calibration`` do not); ``import distree_env`` never imports this package.
See docs/live.md.
"""
