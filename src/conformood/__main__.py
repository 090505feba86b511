"""``python -m conformood`` (also what ``torchrun -m conformood train`` runs)."""

from .cli import main

main()
