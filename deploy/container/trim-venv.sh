#!/bin/sh
# Trim the images' virtual environment (/opt/venv) of what running never needs: numpy's and onnx's
# own test suites and test data (~40 MB), and the packages named as arguments (pip, setuptools).
set -e
site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
find "$site/numpy" -depth -type d -name tests -exec rm -rf {} +
rm -rf "$site/onnx/backend/test/data"
if [ "$#" -gt 0 ]; then
    /opt/venv/bin/python -m pip uninstall --yes --quiet "$@"
fi
