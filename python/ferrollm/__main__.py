import sys

from ferrollm.cli import main

sys.exit(main())
