"""Meta-reinforcement-learning algorithms, one file each (the RL plumbing is in `fastadapt.rl`)."""
