"""Optimisation-based learners: adapt by gradient steps on the support set (MAML family, Reptile)."""
