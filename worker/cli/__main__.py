"""``python -m worker.cli``: the same as the ``imagegen`` console script."""

from imagegen.worker.cli import main

main()
