"""Layer 5: the Typer command-line interface ``dgeo``."""
