"""`python -m bench`: the service measured against its bare server stack (see bench/README.md)."""
