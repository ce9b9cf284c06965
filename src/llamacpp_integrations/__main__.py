"""``python -m llamacpp_integrations`` runs the demo."""

import sys

from llamacpp_integrations.demo import main

if __name__ == "__main__":
    sys.exit(main())
