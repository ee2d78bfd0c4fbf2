"""``python -m orgkeypolicy``: the command-line tool."""

from orgkeypolicy.cli import main

main()
