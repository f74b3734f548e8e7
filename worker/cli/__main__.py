"""``python -m worker.cli``: the same as the ``imagegen`` console script."""

from worker.cli import main

main()
