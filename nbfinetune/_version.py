"""The package version, in a leaf module: code anywhere in the package reads it without importing the
package root (whose lazy names reach every layer)."""

__version__ = "0.1.0"
