"""`python -m bench`: the service measured against its bare server stack (see the README's Benchmark section)."""
