"""`python -m search` runs the `lookalike` command."""

from search.cli import app

app(prog_name="lookalike")
