from flowforge.console import main

raise SystemExit(main())
