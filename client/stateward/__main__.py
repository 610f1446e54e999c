"""`python -m stateward` is the `stateward` command."""

from stateward.cli import main

main()
