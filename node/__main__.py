import sys

from node.peer.cli import main

sys.exit(main())
