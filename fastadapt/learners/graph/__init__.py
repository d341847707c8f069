"""Graph-based learners: support and query examples as nodes of a learned graph."""
