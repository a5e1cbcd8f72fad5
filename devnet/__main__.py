"""``python -m devnet``: the ``chainflow devnet`` commands without the entry point."""

from devnet.cli import main

main()
