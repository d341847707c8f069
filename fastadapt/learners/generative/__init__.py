"""Parameter-generating learners: a network maps the context set to a predictive distribution (CNP, NP)."""
