import sys

from nfbuilder.cli import main

sys.exit(main())
