"""Data layer: sources → format detection → row validation → chat-template rendering → split.

Submodules import `datasets`/tokenizers lazily; importing this package is cheap.
"""

from .formats import KNOWN_FORMATS, Example, RowProblem, detect_format, normalize
from .sources import SAMPLES, DataSourceError, sample_files

__all__ = ["KNOWN_FORMATS", "SAMPLES", "DataSourceError", "Example", "RowProblem", "detect_format",
           "normalize", "sample_files"]
