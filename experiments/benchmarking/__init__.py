"""The benchmark behind ``python -m experiments.benchmark``, split into one-job modules.

``policies`` lists what is evaluated (rule sweeps, learned agents, baselines), ``runner`` evaluates
it through ``agents.evaluate`` on every scenario and seed, ``analysis`` aggregates the seeds and
computes the headline figures, ``report`` writes CSV / Markdown / the README block and ``plots``
draws the Pareto curves and exit distributions.
"""
