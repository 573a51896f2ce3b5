import sys

from fewmask.cli.main import main

sys.exit(main())
