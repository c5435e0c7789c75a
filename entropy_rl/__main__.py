"""`python -m entropy_rl` is the `entropy-rl` command."""

from entropy_rl.cli import main

raise SystemExit(main())
