"""`python -m bench`: the service measured against its bare server stack (README: Benchmark)."""
