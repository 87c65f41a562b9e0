"""``python -m onnx_dc`` runs the ``onnx-dc`` command line."""

import sys

from onnx_dc.cli import main

sys.exit(main())
