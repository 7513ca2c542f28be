from detach_framework.cli import main

raise SystemExit(main())
