"""`python -m machinegaze.cli ...` (and `torchrun -m machinegaze.cli train ...`)."""

from machinegaze.cli import main

main()
