"""The network behind the exit traces: the early-exit model, its training and its costs (torch).

Modules, one job each: ``network`` (the multi-branch and pipeline early-exit networks), ``data``
(CIFAR-10 from local files), ``train`` (joint training of every exit, resumable), ``presets``
(training recipes per machine), ``checkpoint`` (weights on disk, loaded with ``weights_only``),
``costs`` (FLOPs and bytes per stage, measured from the model), ``export`` (network outputs to an
exit trace). Imports torch; ``import distree_env`` never imports this package.
"""
