"""Meta-reinforcement learning: tasks are environments, support and query data are rollouts.

- `envs`: `RLTask` (a task spec, a pure function of (seed, index)), batched environments
  (2D navigation; MuJoCo families register themselves), `make_env`;
- `rollouts`: seeded, batched rollouts into a time-major `Batch`;
- `returns`: returns, discounted returns, GAE, the linear feature baseline;
- `policy`: a Gaussian policy as pure functions of a parameter dict (log-probability, KL, sampling);
- `trpo`: conjugate gradient and TRPO's constrained, backtracking update.
The algorithms (MAML-RL, ...) are learners in `fastadapt/learners/rl/`; RL suites in `fastadapt/data/rl_*.py`.
"""

from .envs import RLTask, make_env
from .rollouts import Batch, collect

__all__ = ["Batch", "RLTask", "collect", "make_env"]
