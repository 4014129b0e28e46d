import sys

from meddpo.cli.parser import main

sys.exit(main())
