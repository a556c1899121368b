import sys

from qtasks.cli import main

sys.exit(main())
