"""The Oracle: the per-request hindsight reference every policy is measured against.

What it knows, precisely: at each decision it asks the bound vector environment
(``oracle_actions()``), which knows, for the request being decided, whether every exit's answer
is right (the label) and the latency the request would have if it exited at each exit, given
the resource levels that will actually occur (the future of the resource processes) and the
time the request has already spent (its waiting included). It picks the exit that maximises
that request's own reward. Under queueing it does not plan for the requests waiting behind:
it answers each request as well as hindsight allows, one request at a time. It is therefore the
bound on what a policy can gain on a request with perfect knowledge of that request, not a
bound on the whole stream (answering one request earlier than its own best to shorten the wait
of the next ones can, in principle, earn more reward in total).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agents.rules import EXIT, RulePolicy

__all__ = ["Oracle"]


class Oracle(RulePolicy):
    """The best exit per request in hindsight (module docstring); ignores the observation."""

    def __init__(self) -> None:
        super().__init__()
        self.env: Any = None

    def bind(self, env: Any) -> Oracle:
        """Keep ``env``: the Oracle asks it for the hindsight-best action at every decision."""
        super().bind(env)
        if not hasattr(env, "oracle_actions"):
            raise ValueError("Oracle: the environment has no oracle_actions(); use DistrEEVecEnv")
        self.env = env
        return self

    def decide(self, obs: np.ndarray) -> np.ndarray:
        """Exit where the bound env says exiting now is the request's best in hindsight."""
        if self.env is None:
            raise ValueError("Oracle: call bind(env) with the DistrEEVecEnv it acts in first")
        return np.asarray(self.env.oracle_actions()) == EXIT
