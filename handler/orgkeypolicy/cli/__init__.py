"""The ``orgkeypolicy`` command line.

Only this package and ``orgkeypolicy.__main__`` import click, rich and cfn-flip: the Lambda
function, which imports the rest of ``orgkeypolicy``, never loads them.
"""

from orgkeypolicy.cli.main import main

__all__ = ["main"]
