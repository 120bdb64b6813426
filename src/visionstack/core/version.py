"""The package version (``visionstack.__version__``; pyproject reads it from here)."""

__version__ = "0.1.0"
