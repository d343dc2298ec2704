import sys

from hupeft.cli import main

sys.exit(main())
