"""Tests of the exit policies, the SB3 glue and the agent scripts."""

#: Tests pin the synthetic trace: the default may become the shipped CIFAR-10 trace.
SYNTH = {"trace": "synthetic"}
