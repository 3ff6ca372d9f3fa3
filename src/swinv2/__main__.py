"""`python -m swinv2`: the same as the `swinv2` command."""
from .cli import main

raise SystemExit(main())
