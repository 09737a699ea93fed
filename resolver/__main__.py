"""`python -m resolver`: the schooldns command line."""

from resolver.processes.cli import main

raise SystemExit(main())
