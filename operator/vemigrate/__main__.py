import sys

from vemigrate.cli import main

sys.exit(main())
