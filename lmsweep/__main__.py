from lmsweep.cli import main

raise SystemExit(main())
