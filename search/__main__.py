"""`python -m search` runs the `lookalike` command."""

if __name__ == "__main__":  # not when a spawned worker process re-imports this module
    from search.cli import app

    app(prog_name="lookalike")
