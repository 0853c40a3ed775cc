import sys

from seqd.cli import main

sys.exit(main())
