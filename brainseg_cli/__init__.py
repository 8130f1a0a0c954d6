"""brainseg: brain-MRI segmentation with transfer learning.

The command-line tool ``brainseg`` is a thin layer over this package; every command calls one
library function that can also be called from Python (see :mod:`brainseg_cli.api`).
"""

__version__ = "0.1.0"
