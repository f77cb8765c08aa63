import sys

from auq.cli.main import main

sys.exit(main())
