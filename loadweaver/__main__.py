from loadweaver.cli import main

raise SystemExit(main())
