"""`python -m circuitlab` (what `torchrun ... -m circuitlab train ...` runs on every rank)."""

from circuitlab.cli import app

app(prog_name="circuitlab")
