#!/bin/sh
# The images' entrypoint: `clipserve ARGS` (default `serve`). A model baked in at build time
# (--build-arg MODEL=DIR) is the model unless CLIPSERVE_MODEL or a --model flag names another.
set -e
if [ -z "${CLIPSERVE_MODEL:-}" ] && [ -f /opt/clipserve/model/clipserve.json ]; then
    export CLIPSERVE_MODEL=/opt/clipserve/model
fi
exec clipserve "$@"
