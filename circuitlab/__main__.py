"""`python -m circuitlab` (what `torchrun ... -m circuitlab train ...` runs on every rank)."""

from circuitlab._entry import main

main()
