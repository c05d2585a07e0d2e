"""`python -m ctxqa ...` is the `ctxqa` command."""

from ctxqa.cli import main

main()
