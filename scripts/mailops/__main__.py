import sys

from mailops.cli import main

sys.exit(main())
