"""The images' HEALTHCHECK: exit 0 when the server answers /healthz on its port, else 1."""

import os
import sys
import urllib.request

port = os.environ.get("CLIPSERVE_PORT", "51000")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as answer:
        sys.exit(0 if answer.status == 200 else 1)
except OSError:
    sys.exit(1)
